# Everything a fresh machine needs: `make demo` runs facestream on the bundled demo data,
# `make test` runs the test suite. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: install browser broker demo web test lint bench eval gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	@# ONNX exports, parsed models and compiled kernels now, not in the first run (~30 s on two cores)
	$(BIN)/facestream engines prepare
	rm -f $(VENV)/.installed-* && touch $@

# Enrol the demo gallery, run the whole pipeline on the demo clip, write events + annotated video to out/.
demo: $(STAMP)
	mkdir -p out
	rm -f out/demo-gallery.db out/demo-gallery.db.faiss
	$(BIN)/facestream enroll import tests/data/video/gallery --gallery out/demo-gallery.db
	$(BIN)/facestream run --gallery out/demo-gallery.db --source tests/data/video/short_hamilton_clip.mp4 \
		--events out/events.jsonl --detections out/detections.jsonl --output out/annotated.mp4 --stats out/stats.json

# The web view on the demo clip, played as a live camera over and over: open http://127.0.0.1:8080/ (Ctrl-C stops).
# Only Lin-Manuel Miranda is enrolled: Alex Lacamoire's close-up shows up as an unknown person to enrol from the page.
web: $(STAMP)
	mkdir -p out
	rm -rf out/web-gallery.db out/web-gallery.db.faiss out/web-gallery.db.thumbs
	$(BIN)/facestream enroll add Lin_Manuel_Miranda tests/data/video/gallery/Lin_Manuel_Miranda/* --gallery out/web-gallery.db
	$(BIN)/facestream run --gallery out/web-gallery.db --source demo=loop:tests/data/video/short_hamilton_clip.mp4 \
		--events out/web-events.jsonl --web

# The web view's end-to-end test drives Debian's chromium + chromedriver (tests/test_web.py): installed here
# when missing and this is a Debian machine where we are root; elsewhere that one test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: /usr/bin/chromium or /usr/bin/chromedriver missing: the browser test will skip" \
		"(Debian: apt-get install chromium chromium-driver)"; fi

# The MQTT tests run a real broker, Debian's mosquitto (tests/mqtt_broker.py): installed like chromium above.
broker:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else echo "note: mosquitto missing: the MQTT tests will skip (Debian: apt-get install mosquitto)"; fi

test: $(STAMP) browser broker
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=20

bench: $(STAMP)
	$(BIN)/python bench/embedder.py
	$(BIN)/python bench/detector.py

# Accuracy on the shipped data: LFW-style pairs built from tests/data, and the demo clip against its truth file.
eval: $(STAMP)
	mkdir -p out
	$(BIN)/python bench/make_demo_pairs.py out/demo-pairs
	$(BIN)/facestream eval pairs --pairs out/demo-pairs/pairs.txt --root out/demo-pairs/images \
		--roc out/demo-pairs/roc.png --csv out/demo-pairs/distances.csv
	$(BIN)/facestream eval video --truth tests/data/video/truth.json tests/data/video/short_hamilton_clip.mp4 \
		--gallery tests/data/video/gallery --save-detections out/eval-detections.jsonl

# The first run on an NVIDIA machine, one step, one JSON report (out/gpu-check.json): device, versions, engines
# built, the gpu tests, engines check on the real engines, bench/gpu.py. Needs the gpu extra in $(VENV) instead
# of make install's cpu one (both faiss packages own `faiss`); without a GPU it says why and exits 2.
gpu-check:
	@test -x $(BIN)/python || { echo "gpu-check: first: $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -e '.[gpu,test]'"; exit 2; }
	mkdir -p out
	$(BIN)/python bench/gpu_check.py --out out/gpu-check.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
