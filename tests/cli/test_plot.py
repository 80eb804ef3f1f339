"""`pystematic-torch plot`: PNGs decoded and measured, labels, smoothing, refused input."""
import pytest
from PIL import Image

from pystematic_torch.cli import _discover, _plot
from tests.cli.conftest import invoke, one_error_line, refused, run_command


def finished_runs(recorded):
    return [run.path for run in _discover.find_runs(recorded)[:3]]


def test_one_panel_per_tag_gives_the_expected_image_size(recorded, tmp_path):
    target = tmp_path / "plot.png"
    code, output = invoke("plot", *finished_runs(recorded), "--tag", "train/loss", "--tag",
                          "val/score", "-o", target)  # fmt: skip
    assert code == 0, output
    assert output.strip() == f"Wrote {target} (800x800 pixels, 3 runs)."
    with Image.open(target) as image:
        image.load()
        assert image.format == "PNG" and image.size == (800, 800)
        assert len(image.convert("RGB").getcolors(maxcolors=2**16)) > 10  # lines were drawn


def test_the_size_can_be_chosen_and_folders_of_runs_are_expanded(recorded, tmp_path):
    target = tmp_path / "plot.png"
    code, output = invoke("plot", recorded, "--tag", "train/loss", "--smooth", "3",
                          "--width", 640, "--height", 480, "-o", target)  # fmt: skip
    assert code == 0, output
    assert "(640x480 pixels, 5 runs)" in output
    with Image.open(target) as image:
        assert image.size == (640, 480)


def test_lines_are_labelled_by_what_differs_between_the_runs(recorded):
    runs = [_discover.load_run(path) for path in finished_runs(recorded)]
    names = _discover.differing_parameters(runs)
    assert names == ["value"]
    assert [_discover.label(run, names) for run in runs] == ["value=1.0", "value=2.0",
                                                             "value=3.0"]  # fmt: skip
    twins = [runs[0], runs[0]]
    assert _plot._unique(["value=1.0"] * 2, twins) == [f"value=1.0 ({runs[0].path.name})"] * 2
    assert _discover.label(runs[0], []) == runs[0].path.name


def test_smoothing_averages_each_point_with_the_ones_before():
    assert _plot._smoothed([1.0, 3.0, 5.0, 7.0], 1) == [1.0, 3.0, 5.0, 7.0]
    assert _plot._smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert _plot._smoothed([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]


def test_tensorboard_files_are_read_when_there_is_no_csv(tensorboard_only, tmp_path):
    assert not (tensorboard_only / "scalars.csv").exists()
    code, output = invoke("plot", tensorboard_only, "--tag", "train/loss", "-o",
                          tmp_path / "tb.png")  # fmt: skip
    assert code == 0, output
    code, output = invoke("runs", tensorboard_only, "--json", "--metric", "train/loss")
    assert '"train/loss": 8.0' in output


def test_an_unknown_tag_lists_the_tags_that_exist(recorded, tmp_path):
    line = refused("plot", recorded, "--tag", "train/los", "-o", tmp_path / "p.png")
    assert line == "Error: Unknown tag 'train/los'; the runs recorded: train/loss, val/score."
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--tag", "x", "-o", "{tmp}/p.png"], "missing does not exist"),
    (["{empty}", "--tag", "x", "-o", "{tmp}/p.png"], "No scalars recorded in"),
    (["{run}", "--tag", "val/score", "-o", "{tmp}/no/p.png"], "no is not a directory"),
    (["{run}", "--tag", "val/score", "-o", "{tmp}/p.xyz"], "Format 'xyz' is not supported"),
])  # fmt: skip
def test_bad_input_is_one_clear_line(recorded, tmp_path, args, message):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "parameters.yaml").write_text("value: 1\n")
    places = {"missing": tmp_path / "missing", "empty": empty, "tmp": tmp_path,
              "run": finished_runs(recorded)[0]}  # fmt: skip
    assert message in refused("plot", *(arg.format(**places) for arg in args))


@pytest.mark.timeout(120)
def test_the_installed_command_plots_for_real(recorded, tmp_path):
    target = tmp_path / "real.png"
    result = run_command("plot", *finished_runs(recorded), "--tag", "val/score", "-o", target)
    assert result.returncode == 0, result.stderr
    with Image.open(target) as image:
        assert image.size == (800, 400)
    result = run_command("plot", recorded, "--tag", "nope", "-o", target)
    assert result.returncode == 1
    assert "Unknown tag 'nope'" in one_error_line(result.stderr)
