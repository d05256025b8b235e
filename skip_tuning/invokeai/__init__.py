"""Skip Tuning for InvokeAI: a community node (``nodes``, imported by the repository's ``__init__.py`` when
InvokeAI loads it from ``ROOT/nodes/``) around the host-free ``tuning`` and ``skip_tuning.diffusers``.

Importing this package imports nothing of InvokeAI; ``nodes`` does. See docs/invokeai.md.
"""
