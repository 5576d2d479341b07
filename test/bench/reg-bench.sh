#!/bin/sh
# reg-bench without and with osslproc-run, alternating; a benchmark, not
# a test (doc/benchmarks.md, "osslproc-run on nginx").
#   reg-bench.sh OSSLPROC-RUN PRELOAD REG-BENCH PLUGIN [TIMES [CALLS]]
# TIMES (3) runs of each; CPU (0) is the one they are pinned to, so that
# a run does not move between CPUs.
run=$1
export OSSLPROC_PRELOAD_LIB=$2
cpu=${CPU:-0}
for i in $(seq "${5:-3}"); do
	taskset -c "$cpu" "$3" "$4" ${6:-1000000}
	taskset -c "$cpu" "$run" "$3" "$4" ${6:-1000000}
done
