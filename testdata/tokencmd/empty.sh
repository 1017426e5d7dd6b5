#!/bin/sh
# Test token command: succeeds but prints nothing.
exit 0
