#!/bin/sh
# Test token command: prints the target it was asked to mint a token for.
echo "$QUERYCOP_BACKEND_HOST:$QUERYCOP_BACKEND_PORT:$QUERYCOP_BACKEND_USER:$QUERYCOP_BACKEND_DATABASE"
