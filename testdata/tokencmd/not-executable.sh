#!/bin/sh
# Test token command: valid, but deliberately WITHOUT the executable bit
# (mode 0644), so running it by path fails with "Permission denied".
echo should-not-run
