"""Shared test helpers: a manual clock, the standard test config, an in-process server and a
`quota-server` subprocess, and readers for the rich error status (google.rpc.ErrorInfo)."""
