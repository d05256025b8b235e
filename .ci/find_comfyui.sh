# Sourced by .ci/install and .ci/run: finds the two ComfyUI source trees the tests run against.
#
#   $comfyui               the floor, the oldest release supported (0.3.64): $COMFYUI_PATH, else ~/ComfyUI,
#                          else shared/ComfyUI beside the repository (the same order as tests/comfy_helpers.py)
#   $comfyui_current       the current release (0.33.0): $COMFYUI_CURRENT_PATH, else shared/ComfyUI-0.33.0
#   $comfyui_current_venv  the virtual environment .ci/install makes for it, named after its version
#                          (.venv-comfyui-0.33): its requirements pin other versions than the floor's
#
# Each is empty when there is no such tree.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"

first_comfyui() {
    local candidate
    for candidate in "$@"; do
        if [[ -n "$candidate" && -f "$candidate/main.py" && -f "$candidate/comfy/model_management.py" ]]; then
            (cd "$candidate" && pwd)
            return
        fi
    done
}

comfyui_version() {  # "0.33.0" from the tree's comfyui_version.py
    sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null
}

if [[ -n "${COMFYUI_PATH:-}" ]]; then
    comfyui="$(first_comfyui "$COMFYUI_PATH")"
else
    comfyui="$(first_comfyui "$HOME/ComfyUI" "$shared/ComfyUI")"
fi

comfyui_current="$(first_comfyui "${COMFYUI_CURRENT_PATH:-$shared/ComfyUI-0.33.0}")"
comfyui_current_venv=""
if [[ -n "$comfyui_current" ]]; then
    current_version="$(comfyui_version "$comfyui_current")"
    comfyui_current_venv="$repo/.venv-comfyui-$(cut -d. -f1,2 <<<"${current_version:-current}")"
fi
