"""The local engine shared by several worker processes: one engine process, reached over a Unix socket."""
