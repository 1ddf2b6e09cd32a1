"""`serve --workers N`: the supervisor and its data-plane worker processes."""
