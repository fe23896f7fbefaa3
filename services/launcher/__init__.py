"""The `tandem` command and the `tandem up` launcher, above every service.

Modules: `cli` (command dispatch), `up` (`tandem up`: its config, the
children's typed configs, readiness, the planner's worker pool),
`supervisor` (restarts crashed children, stops all together), `local_infra`
(private nats-server and etcd), `local_connector` (the planner connector
that starts and stops local worker processes), and the fleet simulator
(`sim_commands`: `tandem simulate` and `tandem router tune`; `fleet_sim`,
`sim_worker`, `sim_loop`, `router_tune`, `mooncake_trace`, `trace_summary`).
No service imports this package.
"""
