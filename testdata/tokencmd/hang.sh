#!/bin/sh
# Test token command: never finishes, and leaves a grandchild behind, so that
# tests can check the whole process group is killed on timeout.
if [ -n "${TOKENCMD_PID_FILE:-}" ]; then
	echo $$ >"$TOKENCMD_PID_FILE"
fi
sleep 300 &
sleep 300
