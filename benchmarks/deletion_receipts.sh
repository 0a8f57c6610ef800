#!/usr/bin/env bash
# The receipts docs/deletion.md shows, from the work folder of `python -m benchmarks.gate_acceptance --work WORK`
# (its original.pt and 16-shadow bank are reused, nothing is trained twice):
#   DSR-0001  one id, LoTUS, no bank           -> not verifiable (exit 3)
#   DSR-0002  the same id retrained, the bank  -> accepted (exit 0); the id is removed from the data copy
#   DSR-0003  30 ids, LoTUS at request settings -> rejected (exit 1)
# then `unlearn audit` on the chain, and a screenshot of each receipt where Chromium is installed.
#     bash benchmarks/deletion_receipts.sh /tmp/gate-bench/run /tmp/gate-bench/receipts
set -u
WORK=$(realpath "${1:?usage: deletion_receipts.sh GATE_BENCH_WORK OUT}")
mkdir -p "${2:?usage: deletion_receipts.sh GATE_BENCH_WORK OUT}" && OUT=$(realpath "$2")
U=$(realpath "$(dirname "$0")/../.venv/bin/unlearn")
cd "$OUT" || exit 2
export UNLEARN_ID_KEY="receipt-demo-operator-secret-0123456789abcdef0123456789"  # a demo secret, not a real one
rm -rf data chain && cp -r "$WORK/digits-hard" data  # a copy: accepted requests remove samples from their data
echo dh-00499 > one.txt
printf '%s\n' dh-00194 dh-00335 dh-00390 dh-00511 dh-00543 dh-00610 dh-00616 dh-00928 dh-01034 dh-01050 \
    dh-01061 dh-01082 dh-01234 dh-01237 dh-01321 dh-01367 dh-01368 dh-01395 dh-01403 dh-01451 dh-01461 dh-01465 \
    dh-01489 dh-01569 dh-01615 dh-01646 dh-01649 dh-01653 dh-01655 dh-01744 > thirty.txt
SHA=$(sha256sum "$WORK/original.pt" | cut -d' ' -f1)
COMMON=(--data "$OUT/data" --out "$OUT/chain")
"$U" forget "${COMMON[@]}" --model "$WORK/original.pt" --model-sha256 "$SHA" --ids one.txt --request-id DSR-0001 \
    > 1.log 2>&1; echo "DSR-0001 exit $?"
"$U" forget "${COMMON[@]}" --model "$WORK/original.pt" --model-sha256 "$SHA" --ids one.txt --request-id DSR-0002 \
    --bank "$WORK/bank" --shadows 16 --method retrain > 2.log 2>&1; echo "DSR-0002 exit $?"
"$U" forget "${COMMON[@]}" --model "$OUT/chain/models/DSR-0002.pt" --ids thirty.txt --request-id DSR-0003 \
    > 3.log 2>&1; echo "DSR-0003 exit $?"
"$U" audit "$OUT/chain" > audit.log 2>&1; echo "audit exit $?"
if command -v chromium > /dev/null; then
    for request in DSR-0001 DSR-0002 DSR-0003; do
        chromium --headless --no-sandbox --disable-gpu --screenshot="$OUT/$request.png" --window-size=1200,1900 \
            "$OUT/chain/receipts/$request.html" > /dev/null 2>&1 && echo "screenshot $OUT/$request.png"
    done
fi
