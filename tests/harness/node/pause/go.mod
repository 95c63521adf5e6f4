module mnist-tuning/tests/harness/node/pause

go 1.24.0
