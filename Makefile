# The two commands a newcomer needs: `make demo` and `make test`. Both install first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: install demo test clean-demo

# Optional profiles on top of the base CPU install: make install EXTRAS=gpu,cloud,loggers (requirements/<name>.txt)
EXTRAS ?=
comma := ,
PROFILES := $(subst $(comma), ,$(EXTRAS))
$(foreach p,$(PROFILES),$(if $(filter $(p),gpu cloud loggers),,$(error EXTRAS: no profile '$(p)'; one of: gpu cloud loggers)))

install: $(STAMP) $(PROFILES:%=$(VENV)/.installed-%)

# Constraints pin the CPU torch wheel and its torchvision on every pip call, so nothing pulls CUDA wheels.
# (On a CUDA machine the same torch==2.13.0 pin resolves to a CUDA build: see README, "GPU node".)
$(STAMP): requirements/base.txt requirements/test.txt requirements/no-deps.txt requirements/constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/base.txt -r requirements/test.txt > $(VENV)/install.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/install.log; exit 1; }
	$(PIP) install -q --no-deps -r requirements/no-deps.txt
	$(PIP) install -q --no-deps -e .
	$(PY) -m diffusion.compat.torchvision_cpu
	$(PY) -c "import composer, streaming, diffusers, transformers, cleanfid, torchvision"
	touch $(STAMP)

# A profile resolves together with the base pins (so it can't move them), then its modules must import.
$(VENV)/.installed-%: requirements/%.txt $(STAMP)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/base.txt -r requirements/test.txt -r $< \
		> $(VENV)/install-$*.log 2>&1 || { grep -v "is ignored: it is neither" $(VENV)/install-$*.log; exit 1; }
	$(PY) -m diffusion.extras --verify $*
	touch $@

demo: install
	$(PY) -m diffusion.demo.run_demo --out $(DEMO_DIR)

# Shuffled by pytest-randomly, on both cores by pytest-xdist (whole files per worker, so module fixtures are
# built once). The seed is printed first; `make test SEED=N` replays that order. pytest's exit 5 (no test
# collected, e.g. a PYTEST_ARGS -k that matches nothing) is said in one line and is not a failure, so CI
# reports a run that ran no test instead of failing (see .ci/run).
TEST_WORKERS ?= 2
test: install
	@seed=$(SEED); seed=$${seed:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "test order: pytest-randomly seed $$seed (same order again: make test SEED=$$seed)"; \
	$(PY) -m pytest tests -q -p randomly --randomly-seed=$$seed -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest exit 5: no test was collected"; rc=0; fi; exit $$rc

clean-demo:
	rm -rf $(DEMO_DIR)
