"""Disaggregated serving, control plane: roles, prefill jobs, the decode and prefill sides.

The seam with the data plane (`services/worker/kv_transfer/`), as built:

Roles. `--disaggregation-mode {aggregated,prefill,decode}` is the worker's
`role` in etcd. Routers send normal traffic to `aggregated` and `decode`
workers only (`tandem.router.worker_view.RoleView`); `prefill` workers get
prefill jobs only, from a router of their own over the same cost model.

One request served disaggregated:
1. The frontend routes to a decode worker as today and learns the prompt's
   uncached length there (`overlap_blocks`). The rule (frontend
   `disagg_rule.py`): remote when uncached > max_local_prefill_length AND the
   model's prefill queue depth < max_prefill_queue_size; every decision counted
   with its reason. Remote: it picks a prefill worker KV-aware and sends the
   decode worker a `GenerateRequest` whose `remote_prefill.prefill_instance_id`
   names it.
2. The decode worker (`decode_side.DecodeCoordinator`) has its engine admit
   the request with ALL its blocks allocated (cached prefix matched) and park
   it (`SequenceStatus.PARKED`: not scheduled, other streams keep stepping),
   then publishes a `tandem.v1.PrefillJob` (proto/disagg.proto) on JetStream
   subject `tandem.{ns}.prefill.{model}.{prefill_instance_id}` (work-queue
   stream `TANDEM_PREFILL_{ns}`, trace context in NATS headers):
   request id, job id, token ids, sampling, decode instance id + endpoint,
   `dst_block_ids` (the blocks it does not hold) and `num_cached_tokens`
   (leading tokens it holds; always a whole number of blocks).
3. The prefill worker (`prefill_side.PrefillJobRunner`, a durable pull consumer
   per prefill worker, explicit ack) has its engine run prefill only (the first
   token sampled there) with the source blocks pinned, then awaits
   `transport.send_blocks(peer, src_block_ids, dst_block_ids, transfer_id=job_id)` (blocks the
   decode worker holds are not sent), releases the pinned blocks (they stay in
   its prefix cache), calls `Disagg.CompletePrefill` on the decode worker
   (request id, job id, first token, its logprob) and acks the job. A failed
   transfer: the completion says `ok=false` (decode prefills locally) and the
   job is terminated. A decode worker that cannot be reached: the job is
   dropped (terminated), blocks released.
4. The decode worker, on an accepted completion, marks the received blocks
   computed, emits the first token and schedules decode. With no completion
   within `--remote-prefill-timeout` it prefills locally, withdraws the job
   (deleted from the stream) and refuses a late completion (unknown job id), so
   a late transfer never lands in blocks it now computes itself. A client
   disconnect withdraws the job and frees the parked blocks; the prefill side
   finds its completion refused and frees its own.
5. When the job's prefill worker leaves before the completion (its etcd
   record goes; `prefill_pool.PrefillPool` watches the model's prefill
   workers), the decode worker moves the job: withdrawn, published again with
   a new job id for the live prefill worker with the fewest queued jobs, the
   old id withdrawn from the receiver gate before the new one is expected.
   The same timeout bounds the whole wait; with no prefill worker left it
   prefills locally at once.

Transport: the data plane's `kv_transfer.transport.BaseKvTransport`
(`await send_blocks(peer, src_block_ids, dst_block_ids, transfer_id=job_id)
-> TransferStats`), `peer` the decode worker's `PeerInfo` (instance id and
endpoint, from the job). The decode side announces each transfer to the data
plane's receiver gate (`expect(job_id, dst_block_ids)` before publishing,
`await withdraw(job_id)` before it reuses or frees the blocks) when the
worker has one. The mocker's transport is `sim_transport.SimulatedTransport`:
no bytes move, it sleeps bytes / `--kv-transfer-bandwidth` (GB/s), bytes
from the mocker's `--kv-bytes-per-token`.

Engine hooks (`engine_hooks.DisaggEngine`, implemented by the mocker and by
the torch engine's `torch_engine/disagg_hooks.py`; an engine without them
refuses the prefill and decode roles at start):
`submit_parked`, `resume_parked`,
`prefill_only`, `kv_transport`. The scheduler states behind them
(`Scheduler.park/resume_remote/resume_local`, `Sequence.pin_blocks` and
`Scheduler.release`) are the shared scheduler's, so both engines get the same.
"""
