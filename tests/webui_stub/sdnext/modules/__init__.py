"""Stand-in of SD.Next's ``modules`` package (see ``webui_stub``): only what Skip Tuning touches."""
