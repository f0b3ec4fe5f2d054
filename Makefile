# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_WS ?= demo_workspace

.PHONY: install demo test lint bench chromium libgl1 clean

# OpenCV (opencv-contrib-python, the cv2 that mediapipe needs) links libGL.so.1 (Debian: libgl1).
LIBGL ?= libGL.so.1
HAS_LIBGL = { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -qF '$(LIBGL) '

$(STAMP): pyproject.toml constraints.txt | libgl1
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# Checked before every install (order-only: it never forces a reinstall); apt-get installs
# libgl1 when it is missing and make runs as root, otherwise make stops here and says how.
libgl1:
	@$(HAS_LIBGL) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && apt-get install -y -qq libgl1 >/dev/null && $(HAS_LIBGL); } || { echo "make install: $(LIBGL) is missing and OpenCV (cv2) cannot load without it: run 'apt-get install libgl1' as root (or your system's libGL package)" >&2; exit 1; }

# Debian's Chromium for the real-browser tests: `make test` stops here when it cannot be
# installed (the browser tests would otherwise skip and the suite pass without them).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || { echo "make chromium: Chromium could not be installed (run 'apt-get install chromium' as root): the browser tests need it" >&2; exit 1; }

demo: $(STAMP)
	$(BIN)/labeler demo-data data/demo
	$(BIN)/labeler -v run data/demo/images -w $(DEMO_WS)
	$(BIN)/labeler app -w $(DEMO_WS)

lint: $(STAMP)
	$(BIN)/ruff check labeler tests bench
	$(BIN)/ruff format --check labeler tests bench

# With LABELER_CI=1 (.ci/run) a skip not on tests/conftest.py's ALLOWED_SKIPS, or a missing
# ../shared, fails the run (pyproject's -ra lists every skip's reason).
test: $(STAMP) chromium lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_pipeline.py

clean:
	rm -rf $(VENV) $(DEMO_WS) .pytest_cache .ruff_cache
