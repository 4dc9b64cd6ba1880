"""Views: what a reference set's tree and bytes look like to readers (raw, or decoded; see :mod:`.present`)."""
