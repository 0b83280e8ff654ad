#!/usr/bin/env bash
# Builds the throwaway OFA *reference* environment: ModelScope's OFA code
# (an implementation nobody in this project wrote) in a venv of its own,
# outside the repository. It is never a dependency of mue_bench; it only
# exists to (re)record tests/fixtures/ofa/ with record_golden.py.
#
#   bash tools/ofa_reference/setup_env.sh [VENV_DIR]     (default /work/ofa-ref-venv)
#   VENV_DIR/bin/python tools/ofa_reference/record_golden.py
#
# Pinned (this combination is known to import and run a random OFAModel):
#   python        3.11
#   torch         2.13.0 (CPU build, from the local wheel folder)
#   transformers  4.40.2 (+ tokenizers 0.19.1, safetensors 0.4.3,
#                         huggingface-hub 0.23.0, numpy 1.26.4)
#   modelscope    1.40.2 wheel, only modelscope/models/multi_modal/ofa/ taken
#                 from it (downloaded with `pip download --no-deps`, unzipped;
#                 the rest of modelscope is NOT installed)
#   fairseq       not installed: a tiny stub package whose fairseq.modules.LayerNorm
#                 is torch.nn.LayerNorm (only vit.py imports it)
set -euo pipefail

VENV="${1:-/work/ofa-ref-venv}"
PY="${PYTHON:-python3.11}"
MODELSCOPE_VERSION=1.40.2
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=4.40.2

"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "torch==${TORCH_VERSION}"
"$VPY" -m pip install -q "transformers==${TRANSFORMERS_VERSION}" \
    "tokenizers==0.19.1" "safetensors==0.4.3" "huggingface-hub==0.23.0" \
    "numpy==1.26.4" packaging

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$VPY" -m pip download -q --no-deps "modelscope==${MODELSCOPE_VERSION}" -d "$WORK"
WHEEL="$(ls "$WORK"/modelscope-${MODELSCOPE_VERSION}-*.whl)"
sha256sum "$WHEEL"
(cd "$WORK" && "$VPY" -m zipfile -e "$WHEEL" unz >/dev/null)

# modelscope skeleton: empty parent packages + the ofa folder as shipped
rm -rf "$SITE/modelscope"
mkdir -p "$SITE/modelscope/models/multi_modal"
cp -r "$WORK/unz/modelscope/models/multi_modal/ofa" "$SITE/modelscope/models/multi_modal/ofa"
for d in modelscope modelscope/models modelscope/models/multi_modal; do
    echo "# stub: only multi_modal/ofa is installed (modelscope ${MODELSCOPE_VERSION})" > "$SITE/$d/__init__.py"
done
# __init__ trimmed to modeling_ofa (the tokenizers and MMSpeech need the full modelscope)
cat > "$SITE/modelscope/models/multi_modal/ofa/__init__.py" <<PYEOF
# Trimmed by tools/ofa_reference/setup_env.sh: only the OFA model.
from .configuration_ofa import OFAConfig
from .modeling_ofa import OFADecoder, OFAEncoder, OFAModel, OFAPreTrainedModel
PYEOF
# utils/constant.py imports modelscope.outputs; nothing on the model path needs it
echo "# trimmed: needs the full modelscope" > "$SITE/modelscope/models/multi_modal/ofa/utils/constant.py"

# fairseq stub: LayerNorm only
mkdir -p "$SITE/fairseq/modules"
cat > "$SITE/fairseq/__init__.py" <<PYEOF
# stub for ModelScope's OFA: only fairseq.modules.LayerNorm is provided
PYEOF
cat > "$SITE/fairseq/modules/__init__.py" <<PYEOF
from torch.nn import LayerNorm  # noqa: F401
PYEOF

"$VPY" - <<'PYEOF'
import torch, transformers
from modelscope.models.multi_modal.ofa import OFAConfig, OFAModel
from modelscope.models.multi_modal.ofa.generate import sequence_generator  # noqa: F401
print("torch", torch.__version__, "transformers", transformers.__version__, "- OFA imports ok")
PYEOF
echo "reference venv ready: $VENV (activate: source $VENV/bin/activate)"
