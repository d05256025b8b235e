"""Shared fixtures. ComfyUI fixtures skip with a reason when no checkout is found.

A checkout is looked for at env COMFYUI_PATH, else ~/ComfyUI, else shared/ComfyUI beside
the repository. With SKIP_TUNING_REQUIRE_COMFYUI=1 (set by .ci/run when it finds a checkout)
a checkout that cannot be imported or started fails the tests instead of skipping them.

Every test that uses a ComfyUI fixture (directly or through another fixture) is marked
``comfyui``: ``pytest -m comfyui`` runs exactly the tests that depend on the ComfyUI version,
which .ci/run repeats for each ComfyUI it tests.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a ComfyUI checkout (COMFYUI_PATH, ~/ComfyUI or "
                                       "shared/ComfyUI); set on every test that uses a ComfyUI fixture")
    config.addinivalue_line("markers", "comfyui_server: starts ComfyUI's main.py --cpu in a subprocess")
    config.addinivalue_line("markers", "compile: torch.compile with inductor on the CPU (slow: a minute or more "
                                       "per test on 2 cores); runs in CI, deselect with -m 'not compile'")
    config.addinivalue_line("markers", "webui_real: starts real A1111/Forge/reForge/SD.Next (SKIP_TUNING_WEBUI_PATHS)")


# Under CI (CI=true) a skipped test means a requirement CI should have installed is missing, and fails, except
# these skips, which no install can lift: what the host version tested does not have, and the real-webui tier
# (marker webui_real), whose checkouts are built from GitHub sources outside CI (docs/testing.md).
SKIPS_BY_DESIGN = (
    "front end 1.2",  # 0.3.64's front end (1.27) cannot show Vue nodes
    "this ComfyUI has no search aliases",  # 0.3.64
    "this ComfyUI has no dynamic VRAM",  # 0.3.64
    "this machine runs PyTorch attention",  # a CPU without ComfyUI's split attention compiles as one graph
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _fail_unexpected_skip(report, by_design: bool) -> None:
    if _in_ci() and report.skipped and not by_design:
        reason = _skip_reason(report.longrepr)
        if not any(allowed in reason for allowed in SKIPS_BY_DESIGN):
            report.outcome = "failed"
            report.longrepr = f"CI=true: skipped for a missing requirement, which CI must have: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result(), by_design=item.get_closest_marker("webui_real") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    _fail_unexpected_skip(report, by_design="webui_real" in str(getattr(collector, "path", "")))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "comfyui_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfyui)


def _require_comfyui() -> bool:
    return os.environ.get("SKIP_TUNING_REQUIRE_COMFYUI", "") not in ("", "0")


def _unavailable(reason: str):
    if _require_comfyui():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def comfyui_path():
    """Path of the ComfyUI checkout; skips the test when there is none."""
    import comfy_helpers

    path = comfy_helpers.find_comfyui()
    if path is None:
        _unavailable(comfy_helpers.comfyui_missing_reason())
    return path


@pytest.fixture(scope="session")
def comfy(comfyui_path):
    """ComfyUI imported in this process (CPU unless CUDA is available); yields the checkout path."""
    import comfy_helpers

    try:
        comfy_helpers.import_comfyui(comfyui_path)
    except Exception as error:  # missing requirements of the checkout
        _unavailable(f"ComfyUI at {comfyui_path} cannot be imported: {type(error).__name__}: {error}")
    return comfyui_path


@pytest.fixture(scope="session")
def skip_tuning_pack(comfy):
    """The repository imported as a node pack (``skip_tuning_pack``), as ComfyUI imports it."""
    import comfy_helpers

    return comfy_helpers.load_pack()


@pytest.fixture(scope="session")
def torch_compile_node(comfy):
    """ComfyUI's TorchCompileModel node class (the compile tests of U-Net, U-ViT and DiT patches)."""
    try:
        from comfy_extras.nodes_torch_compile import TorchCompileModel
    except ImportError as error:
        pytest.skip(f"this ComfyUI has no TorchCompileModel: {error}")
    return TorchCompileModel


@pytest.fixture(scope="session")
def comfy_nodes(skip_tuning_pack):
    """The pack's node classes (V3 schema), imported as ComfyUI imports them through ``comfy_entrypoint``."""
    import importlib

    return importlib.import_module(f"{skip_tuning_pack.__name__}.skip_tuning.comfyui.nodes")


@pytest.fixture(scope="session")
def comfyui_server(comfyui_path, tmp_path_factory):
    """ComfyUI's main.py --cpu with this extension and tests/comfy_test_nodes in custom_nodes.

    One server per test session; always stopped at the end. Its base directory (models,
    output, the server log) is a fresh temporary folder.
    """
    import comfy_helpers

    base = tmp_path_factory.mktemp("comfyui_base")
    packs = {
        "skip-tuning": comfy_helpers.REPO_ROOT,
        "skip_tuning_test_nodes": comfy_helpers.TEST_NODES_DIR,
        "skip_tuning_frontend_test_nodes": comfy_helpers.TESTS_DIR / "comfy_test_nodes_frontend",
    }
    try:
        context = comfy_helpers.comfyui_server(comfyui_path, base, packs)
        server = context.__enter__()
    except RuntimeError as error:
        _unavailable(f"ComfyUI server did not start: {error}")
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


def pytest_terminal_summary(terminalreporter):
    import sys

    helpers = sys.modules.get("comfy_helpers")
    if helpers is None or not (helpers.MEASURED_RHOS or helpers.MEASURED_WINDOWS):
        return
    write = terminalreporter.write_line
    terminalreporter.section("Skip Tuning: measured skip scales (probe after / probe before)")
    for model, rows in helpers.MEASURED_RHOS.items():
        write(model)
        for block, expected, low, high in rows:
            deviation = max(abs(low - expected), abs(high - expected))
            write(f"  block {block:2d}: formula {expected:.8f}  measured {low:.8f} .. {high:.8f}"
                  f"  (max deviation {deviation:.1e})")
    for setting, rows in helpers.MEASURED_WINDOWS.items():
        write(setting + ": " + ", ".join(f"step {k} sigma {sigma} {'on' if on else 'off'}" for k, sigma, on in rows))
