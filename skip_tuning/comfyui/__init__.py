"""Skip Tuning's ComfyUI node pack: ``nodes`` (the V3 node classes, which need ComfyUI) and the adapters behind
them, which import ComfyUI only inside functions: ``adapter`` (Skip Tuning), ``compare`` (the steps x rho grid),
``residual`` (Residual Tuning). ComfyUI loads the repository root's ``__init__.py``, which serves these.
"""
