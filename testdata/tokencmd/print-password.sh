#!/bin/sh
# Test token command: prints the password of the role in $QUERYCOP_BACKEND_USER.
# If TOKENCMD_COUNT_FILE is set, appends one line per run so tests can count runs.
if [ -n "${TOKENCMD_COUNT_FILE:-}" ]; then
	printf '%s\n' "${QUERYCOP_BACKEND_USER:-}" >>"$TOKENCMD_COUNT_FILE"
fi
case "${QUERYCOP_BACKEND_USER:-}" in
u_scram) echo scram-secret ;;
u_md5) echo md5-secret ;;
u_password) echo plain-secret ;;
u_trust) echo unused ;;
*)
	echo "no password known for role ${QUERYCOP_BACKEND_USER:-}" >&2
	exit 1
	;;
esac
