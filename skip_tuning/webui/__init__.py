"""Skip Tuning's webui script (Automatic1111, Forge, reForge, SD.Next), one module per host: ``a1111``,
``forge``, ``sdnext``, plus ``xyz`` (the X/Y/Z plot axes), ``common`` (parameters, infotext, warnings, the
sampling-progress window) and ``script`` (the Script class).

The webuis load ``scripts/skip_tuning.py`` at the repository root, which imports ``script`` while the extension
folder is on sys.path (A1111 keeps it there only while it loads scripts/). None of these modules imports gradio
or the webui's ``modules`` at import time.
"""
