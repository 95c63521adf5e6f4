module mnist-tuning/tests/harness/node/gitserver

go 1.24.0
