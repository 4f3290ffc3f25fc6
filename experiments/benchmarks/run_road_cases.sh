set -u
out=$1
i=0
while IFS= read -r line; do
  i=$((i+1))
  .venv/bin/python -m autosurgeon run $line --json > $out/$i.json 2> $out/$i.err; echo "$? $line" >> $out/rc.txt
done <<'CASES'
tiny-llama --max-new-tokens 8
tiny-llama --max-new-tokens 8 --memory-budget cpu=2MiB
tiny-llama --max-new-tokens 8 --weight-format int8 --memory-budget cpu=2MiB
tiny-llama --max-new-tokens 8 --weight-format int4
tiny-llama --max-new-tokens 8 --weight-format bfloat16 --memory-budget 25%
tiny-llama --max-new-tokens 8 --kv-precision int8 --kv-budget 50% --memory-budget cpu=3MiB
tiny-moe --max-new-tokens 8 --prefetch markov --expert-cache 0.25
tiny-moe --max-new-tokens 8 --prefetch lru --memory-budget cpu=4MiB
tiny-llama --max-new-tokens 8 --adapt --memory-budget cpu=2MiB
digits-cnn
tiny-llama --max-new-tokens 8 --memory-budget cpu=1KiB
tiny-llama --max-new-tokens 8 --lookahead 0 --memory-budget cpu=2MiB
CASES
