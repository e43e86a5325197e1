# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Re-install when pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint venv clean wheel

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,train,export,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q

# DEMO_METHOD=iic|ac|infoseg|picie|stego|anomaly DEMO_STEPS=280 DEMO_CAP_S=900 DEMO_OUT=demo_out ... (environment or make arguments;
# all in demo/settings.py)
demo: $(STAMP)
	$(PY) demo/run.py

# The runtime wheel a line installs: pip install 'dist/usseg_sdk-<version>-py3-none-any.whl[cpu]' (or [gpu]).
# build/ goes first: setuptools keeps files there that were deleted from usseg_sdk/ since the last build.
wheel: $(STAMP)
	rm -rf build dist/usseg_sdk-*.whl
	$(PY) -m pip wheel --no-deps --no-build-isolation --quiet -w dist .
	@ls dist/usseg_sdk-*.whl

lint: $(STAMP)
	$(PY) -m ruff check usseg_sdk training export tests benchmarks deploy demo

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache build dist
