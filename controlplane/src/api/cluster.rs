use faas_proto::v1::cluster_service_client::ClusterServiceClient;
use faas_proto::v1::cluster_service_server::ClusterService;
use faas_proto::v1::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, DeleteJoinTokenRequest,
    DeleteJoinTokenResponse, DrainNodeRequest, ListJoinTokensRequest, ListJoinTokensResponse,
    ListNodesRequest, ListNodesResponse, Node, RemoveNodeRequest, RemoveNodeResponse,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::error::ApiError;
use crate::store::Kind;

#[tonic::async_trait]
impl ClusterService for Api {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let Ok(broker) = self.broker() else {
            let channel = self.leader.channel().await?;
            return ClusterServiceClient::new(channel)
                .list_nodes(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed);
        };
        let mut nodes = broker.list_nodes().await;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListNodesResponse {
            nodes,
            policy: broker.policy().to_string(),
            replica_version: faas_proto::VERSION.to_string(),
            leader: self
                .leader
                .url()
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| self.replica.to_string()),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let Ok(broker) = self.broker() else {
            let channel = self.leader.channel().await?;
            return ClusterServiceClient::new(channel)
                .drain_node(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed);
        };
        let req = request.into_inner();
        if req.undrain {
            // Recorded first: a node drained while away can be taken back.
            self.store
                .delete(Kind::Drain, &req.name)
                .await
                .map_err(ApiError::from)?;
        }
        let Some(node) = broker.drain(&req.name, !req.undrain).await else {
            return Err(ApiError::NotFound(format!("node {:?} is not connected", req.name)).into());
        };
        if !req.undrain {
            // Kept in etcd so that the drain outlives the agent's session and
            // this leader.
            let record = Node {
                name: req.name.clone(),
                draining: true,
                ..Default::default()
            };
            self.store
                .put(Kind::Drain, &req.name, &record)
                .await
                .map_err(ApiError::from)?;
        }
        Ok(Response::new(node))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        Ok(Response::new(
            Api::create_join_token(self, request.into_inner()).await?,
        ))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        Ok(Response::new(Api::list_join_tokens(self).await?))
    }

    async fn delete_join_token(
        &self,
        request: Request<DeleteJoinTokenRequest>,
    ) -> Result<Response<DeleteJoinTokenResponse>, Status> {
        Api::delete_join_token(self, &request.into_inner().id).await?;
        Ok(Response::new(DeleteJoinTokenResponse {}))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        Api::remove_node(self, request.into_inner()).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }
}
