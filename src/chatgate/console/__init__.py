"""The web console: its pages (a built single-page app) and the JSON endpoints only it uses."""
