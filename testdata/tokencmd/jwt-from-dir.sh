#!/bin/sh
# Test token command: prints the token the test stored in
# $TOKENCMD_TOKEN_DIR/$QUERYCOP_BACKEND_USER (a JWT that is also that role's
# password). Optional:
#   TOKENCMD_COUNT_FILE  one line "$QUERYCOP_BACKEND_USER" is appended per run
#   TOKENCMD_SLEEP       seconds to sleep before printing (az's latency)
#   TOKENCMD_ROTATE_DIR  after the sleep, ask the test to issue a new token
#                        (write req.<pid>, holding the user) and wait for
#                        ack.<pid>; meanwhile the test writes the new token to
#                        the file and makes it the role's password, so what
#                        is printed is always the current password
#   TOKENCMD_TRACE_FILE  "start <pid> <unix time>" and "end <pid> <unix time>" are
#                        appended when the run starts and when it prints
user=${QUERYCOP_BACKEND_USER:-}
trace() {
	if [ -n "${TOKENCMD_TRACE_FILE:-}" ]; then
		echo "$1 $$ $(date +%s.%N)" >>"$TOKENCMD_TRACE_FILE"
	fi
}
trace start
if [ -n "${TOKENCMD_COUNT_FILE:-}" ]; then
	printf '%s\n' "$user" >>"$TOKENCMD_COUNT_FILE"
fi
if [ -n "${TOKENCMD_SLEEP:-}" ]; then
	sleep "$TOKENCMD_SLEEP"
fi
if [ -n "${TOKENCMD_ROTATE_DIR:-}" ]; then
	printf '%s\n' "$user" >"$TOKENCMD_ROTATE_DIR/.req.$$"
	mv "$TOKENCMD_ROTATE_DIR/.req.$$" "$TOKENCMD_ROTATE_DIR/req.$$"
	while [ ! -e "$TOKENCMD_ROTATE_DIR/ack.$$" ]; do
		sleep 0.01
	done
fi
file="${TOKENCMD_TOKEN_DIR:?TOKENCMD_TOKEN_DIR is not set}/$user"
if [ ! -r "$file" ]; then
	echo "no token stored for role $user" >&2
	exit 1
fi
trace end
cat "$file"
