# Two entry points: `make demo` (quickstart end to end) and `make test` (test suite).
# Both create .venv if it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch build this project is tested with; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.headsup-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

RUN ?= runs/quickstart
SAMPLES ?= data/samples

.PHONY: install demo test test-slow clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[dev]'
	# these two pin old torch/numpy/Pillow in their metadata but work with current ones
	$(PIP) install -q --no-deps facenet-pytorch==2.6.0 pyiqa==0.1.16
	# open-clip-torch: only for CLIP's BPE vocabulary file (the tiny stand-in's tokenizer)
	$(PIP) install -q --no-deps open-clip-torch==3.3.0
	# basicsr: the Real-ESRGAN reference that tests and benchmarks compare with (its setup.py needs torch present)
	$(PIP) install -q --no-deps --no-build-isolation basicsr==1.4.2
	touch $@

demo: install
	$(VENV)/bin/headsup-tools samples $(SAMPLES)
	$(VENV)/bin/headsup-tools tiny-backbone $(SAMPLES)/train runs/tiny_sd
	# --ckpt_path last: a rerun resumes (or reuses) the run instead of starting a second one beside it
	$(VENV)/bin/headsup fit --config configs/experiments/quickstart.yaml --ckpt_path last
	$(VENV)/bin/headsup test --config configs/experiments/quickstart.yaml --ckpt_path $(RUN)/checkpoints/last.ckpt
	$(VENV)/bin/headsup predict --config configs/experiments/quickstart.yaml \
		--ckpt_path $(RUN)/checkpoints/last.ckpt --data.predict_input $(SAMPLES)/predict \
		--writer.output_dir $(RUN)/predict

# Two pytest workers of one torch thread each (pytest-xdist): the 2-core CI machine runs the suite in
# about two thirds of the time of one process with two threads (benchmarks/RESULTS.md).
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS)

test-slow: install
	$(PY) -m pytest -m slow

clean-demo:
	rm -rf $(RUN) runs/tiny_sd $(SAMPLES)
