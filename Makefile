# Two commands matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DJANGO_SETTINGS_MODULE := config.settings

.PHONY: run test bench chaos lint format venv clean

$(BIN)/activate-installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/activate-installed

# Web server, Celery worker and Celery beat in the foreground; Ctrl-C stops all three.
run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py welcome
	$(BIN)/honcho --procfile Procfile.dev start

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Speed and memory figures as ratios against baselines measured in the same run;
# they are added to docs/benchmarks.md.
bench: venv
	$(BIN)/python manage.py migrate --noinput --verbosity 0
	$(BIN)/python manage.py bench --record --json var/bench.json

# Kill and freeze workers, starve one of the GIL, wipe the broker, then check from the
# database that nothing was lost or doubled.
chaos: venv
	$(BIN)/python manage.py migrate --noinput --verbosity 0
	$(BIN)/python manage.py chaos --cpu-step --json var/chaos.json

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var
