"""Skip Tuning's webui script, one module per host: ``a1111``, ``forge``, ``sdnext``, plus ``xyz`` (the X/Y/Z
plot axes) and ``common`` (parameters, infotext, warnings, the sampling-progress window).

The webuis load ``scripts/skip_tuning.py``, which loads ``sd_webui_script.py`` (the Script class); that imports
these modules while the extension folder is on sys.path (A1111 keeps it there only while it loads scripts/).
None of them imports gradio or the webui's ``modules`` at import time.
"""
