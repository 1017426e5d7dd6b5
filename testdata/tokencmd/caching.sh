#!/bin/sh
# Test token command that caches its token the way `az account
# get-access-token` does: it hands back the cached token until fewer than
# TOKENCMD_KEEP seconds are left, and only then makes a new one. Each token
# is an unsigned JWT whose exp claim is its expiry (milliseconds).
#   TOKENCMD_CACHE_FILE  the cache: line 1 the expiry (Unix seconds), line 2
#                        the token (required)
#   TOKENCMD_LIFETIME    seconds a new token lasts (default 3600)
#   TOKENCMD_KEEP        the cached token is printed while more than this
#                        many seconds are left (default 300, az's 5 minutes)
#   TOKENCMD_ON_MINT     run through sh with TOKENCMD_NEW_TOKEN and
#                        TOKENCMD_NEW_EXP set, after a new token is made and
#                        before it is printed; if it fails, so does the run
#                        (a test makes the token the role's password there)
#   TOKENCMD_RUN_LOG     one line per run is appended: "<start> <end> new
#                        <exp>" or "<start> <end> cached <exp>" (Unix seconds)
# Runs for one cache file must not overlap (Querycop runs the command once
# at a time per role).
set -eu
cache=${TOKENCMD_CACHE_FILE:?TOKENCMD_CACHE_FILE is not set}
lifetime=${TOKENCMD_LIFETIME:-3600}
keep=${TOKENCMD_KEEP:-300}
start=$(date +%s.%N)

exp="" tok=""
if [ -r "$cache" ]; then
	{ read -r exp && read -r tok; } <"$cache" || true
fi
kind=cached
if [ -z "$tok" ] || awk -v e="$exp" -v n="$start" -v k="$keep" 'BEGIN { exit !(e - n < k) }'; then
	kind=new
	exp=$(awk -v n="$start" -v l="$lifetime" 'BEGIN { printf "%.3f", n + l }')
	b64url() { base64 | tr -d '\n=' | tr '+/' '-_'; }
	header=$(printf '{"alg":"none","typ":"JWT"}' | b64url)
	payload=$(printf '{"exp":%s,"sub":"caching","jti":"%s-%s"}' "$exp" "$$" "$(date +%N)" | b64url)
	sig=$(printf 'unsigned' | b64url)
	tok="$header.$payload.$sig"
	if [ -n "${TOKENCMD_ON_MINT:-}" ]; then
		TOKENCMD_NEW_TOKEN=$tok TOKENCMD_NEW_EXP=$exp sh -c "$TOKENCMD_ON_MINT" >&2
	fi
	printf '%s\n%s\n' "$exp" "$tok" >"$cache.tmp.$$"
	mv "$cache.tmp.$$" "$cache"
fi
if [ -n "${TOKENCMD_RUN_LOG:-}" ]; then
	echo "$start $(date +%s.%N) $kind $exp" >>"$TOKENCMD_RUN_LOG"
fi
printf '%s\n' "$tok"
