"""Stand-in of the webui's ``modules`` package (see ``webui_stub``): only what Skip Tuning touches."""
