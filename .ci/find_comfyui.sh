# Sourced by .ci/install and .ci/run: sets $comfyui to the ComfyUI source tree the tests use,
# the same order as tests/comfy_helpers.py: $COMFYUI_PATH, else ~/ComfyUI, else shared/ComfyUI
# beside the repository (where the project's CI lays one). Empty when there is none.
comfyui=""
if [[ -n "${COMFYUI_PATH:-}" ]]; then
    candidates=("$COMFYUI_PATH")
else
    candidates=("$HOME/ComfyUI" "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/ComfyUI")
fi
for candidate in "${candidates[@]}"; do
    if [[ -f "$candidate/main.py" && -f "$candidate/comfy/model_management.py" ]]; then
        comfyui="$(cd "$candidate" && pwd)"
        break
    fi
done
