#!/usr/bin/env bash
# The main job: set up (first run: a few minutes), then the whole loop: a private Redis, a synthetic camera,
# the shipped demo engine, the worker, and a live summary. Extra arguments go to `inspector demo`, e.g.
# `scripts/demo.sh --seconds 60 --capture temp`: capture and evidence crops on into a temporary folder, and at the
# end how many frames each policy kept (README "Learning from the line").
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$(dirname "$0")/.."
exec inspector demo "$@"
