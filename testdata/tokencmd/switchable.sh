#!/bin/sh
# Test token command: fails like fail-aadsts.sh while the file
# $TOKENCMD_FAIL_FLAG exists; otherwise behaves like jwt-from-dir.sh.
# Every run, failed or not, appends "$QUERYCOP_BACKEND_USER" to
# $TOKENCMD_COUNT_FILE if that is set.
if [ -n "${TOKENCMD_FAIL_FLAG:-}" ] && [ -e "$TOKENCMD_FAIL_FLAG" ]; then
	if [ -n "${TOKENCMD_COUNT_FILE:-}" ]; then
		printf '%s\n' "${QUERYCOP_BACKEND_USER:-}" >>"$TOKENCMD_COUNT_FILE"
	fi
	echo 'AADSTS700082: The refresh token has expired due to inactivity.' >&2
	echo 'Run az login' >&2
	exit 1
fi
exec "$(dirname "$0")/jwt-from-dir.sh"
