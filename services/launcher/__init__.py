"""The `tandem` command and the `tandem up` launcher, above every service.

Modules: `cli` (command dispatch), `up` (`tandem up`: its config, the
children's typed configs, readiness, the planner's worker pool),
`supervisor` (restarts crashed children, stops all together), `local_infra`
(private nats-server and etcd), `local_connector` (the planner connector
that starts and stops local worker processes). No service imports this package.
"""
