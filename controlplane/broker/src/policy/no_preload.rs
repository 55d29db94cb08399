//! No preload: a spot is free or running. A call takes a free spot, else
//! waits in the queue; a freed spot takes the head of the queue.

use super::Policy;
use crate::cluster::{Cluster, Event, Millis, Operation};

pub struct NoPreload;

impl Policy for NoPreload {
    fn name(&self) -> &'static str {
        "no-preload"
    }

    fn decide(&mut self, cluster: &mut Cluster, event: &Event, _now: Millis) {
        if let Event::CallArrived(call) = event {
            cluster.enqueue(call.clone());
        }
        for spot in cluster.free_spots() {
            let Some(call) = cluster.dequeue() else { break };
            cluster.send(Operation::ExecuteNoPreload { spot, call });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Broker, FunctionRef, PendingCall, SpotId, SpotState};

    fn call(id: &str, at: Millis) -> PendingCall {
        PendingCall {
            id: id.into(),
            function: FunctionRef {
                name: "f".into(),
                version: 1,
                runtime: "python3".into(),
            },
            arrived_at: at,
        }
    }

    fn spot(i: u32) -> SpotId {
        SpotId {
            node: "n1".into(),
            index: i,
        }
    }

    #[test]
    fn calls_take_free_spots_then_queue_in_order() {
        let mut b = Broker::new(Box::new(NoPreload));
        assert!(b
            .handle(
                Event::NodeJoined {
                    node: "n1".into(),
                    spots: 2
                },
                0
            )
            .is_empty());
        let ops: Vec<_> = (0..4)
            .flat_map(|i| b.handle(Event::CallArrived(call(&format!("c{i}"), i)), i))
            .collect();
        assert_eq!(ops.len(), 2, "only two spots");
        assert!(
            matches!(&ops[0], Operation::ExecuteNoPreload { spot: s, call } if *s == spot(0) && call.id == "c0")
        );
        assert!(
            matches!(&ops[1], Operation::ExecuteNoPreload { spot: s, call } if *s == spot(1) && call.id == "c1")
        );
        assert_eq!(b.cluster().queue().len(), 2);

        // The spot is still busy while its container is torn down.
        let ops = b.handle(
            Event::SpotReported {
                spot: spot(1),
                state: SpotState::Clearing,
            },
            10,
        );
        assert!(ops.is_empty());
        // A freed spot takes the head of the queue.
        let ops = b.handle(
            Event::SpotReported {
                spot: spot(1),
                state: SpotState::Free,
            },
            11,
        );
        assert!(
            matches!(&ops[..], [Operation::ExecuteNoPreload { spot: s, call }] if *s == spot(1) && call.id == "c2")
        );
        assert_eq!(b.cluster().queue().len(), 1);
    }

    #[test]
    fn a_call_without_nodes_waits_until_one_joins() {
        let mut b = Broker::new(Box::new(NoPreload));
        assert!(b.handle(Event::CallArrived(call("c0", 0)), 0).is_empty());
        let ops = b.handle(
            Event::NodeJoined {
                node: "n1".into(),
                spots: 1,
            },
            5,
        );
        assert!(matches!(&ops[..], [Operation::ExecuteNoPreload { call, .. }] if call.id == "c0"));
    }

    #[test]
    fn a_node_leaving_takes_its_spots_out_of_the_pool() {
        let mut b = Broker::new(Box::new(NoPreload));
        b.handle(
            Event::NodeJoined {
                node: "n1".into(),
                spots: 2,
            },
            0,
        );
        b.handle(Event::NodeLeft { node: "n1".into() }, 1);
        assert_eq!(b.cluster().spot_count(), 0);
        assert!(b.handle(Event::CallArrived(call("c0", 2)), 2).is_empty());
        // Stale reports about the gone node change nothing.
        assert!(b
            .handle(
                Event::SpotReported {
                    spot: spot(0),
                    state: SpotState::Free
                },
                3
            )
            .is_empty());
        assert_eq!(b.cluster().queue().len(), 1);
    }
}
