#!/bin/sh
# Test token command: fails like `az account get-access-token` with an expired login.
echo 'AADSTS700082: The refresh token has expired due to inactivity.' >&2
echo 'Run az login' >&2
exit 1
