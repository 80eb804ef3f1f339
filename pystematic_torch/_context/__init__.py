"""The Context's private parts: moving items, loading them atomically, catching mistakes."""
