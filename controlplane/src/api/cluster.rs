use faas_proto::v1::cluster_service_server::ClusterService;
use faas_proto::v1::{ListNodesRequest, ListNodesResponse};
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl ClusterService for Api {
    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let broker = self.broker()?;
        let mut nodes = broker.list_nodes().await;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListNodesResponse {
            nodes,
            policy: broker.policy().to_string(),
            leader: self.replica.to_string(),
        }))
    }
}
