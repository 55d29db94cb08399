//! Who may do what, on the real stack (issue 11): every RPC against every
//! kind of caller, invokers kept to their own calls, and nodes kept to
//! their own identity and calls.

use std::time::Duration;

use faas_pki::client::ClientTls;
use faas_proto::v1::access_service_client::AccessServiceClient;
use faas_proto::v1::agent_service_client::AgentServiceClient;
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::cluster_service_client::ClusterServiceClient;
use faas_proto::v1::function_service_client::FunctionServiceClient;
use faas_proto::v1::namespace_service_client::NamespaceServiceClient;
use faas_proto::v1::node_join_service_client::NodeJoinServiceClient;
use faas_proto::v1::runtime_service_client::RuntimeServiceClient;
use faas_proto::v1::secret_service_client::SecretServiceClient;
use faas_proto::v1::*;
use faas_tests::{fixture_dir, wait_running, Channel, Stack, StackOptions};
use tonic::Code;

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Nobody,
    Garbage,
    Revoked,
    Expired,
    PublicInvoker,
    Invoker,
    Developer,
    Admin,
}

impl Caller {
    fn rank(self) -> u8 {
        match self {
            Caller::PublicInvoker => 1,
            Caller::Invoker => 2,
            Caller::Developer => 3,
            Caller::Admin => 4,
            _ => 0,
        }
    }
}

async fn create_token(stack: &Stack, role: Role, ttl_ms: u64) -> anyhow::Result<String> {
    Ok(AccessServiceClient::new(stack.channel().await)
        .create_token(CreateTokenRequest {
            role: role as i32,
            description: format!("test {role:?}"),
            ttl_ms,
            ..Default::default()
        })
        .await?
        .into_inner()
        .token)
}

/// The status code of one RPC (named by its path) made on `ch`; OK if it
/// succeeded.
async fn call_rpc(ch: Channel, method: &str) -> Code {
    fn code<T>(r: Result<T, tonic::Status>) -> Code {
        r.err().map(|s| s.code()).unwrap_or(Code::Ok)
    }
    match method {
        "RegisterRuntime" => code(
            RuntimeServiceClient::new(ch)
                .register_runtime(tokio_stream::iter(Vec::<RegisterRuntimeRequest>::new()))
                .await,
        ),
        "GetRuntime" => code(
            RuntimeServiceClient::new(ch)
                .get_runtime(GetRuntimeRequest::default())
                .await,
        ),
        "ListRuntimes" => code(
            RuntimeServiceClient::new(ch)
                .list_runtimes(ListRuntimesRequest::default())
                .await,
        ),
        "DeleteRuntime" => code(
            RuntimeServiceClient::new(ch)
                .delete_runtime(DeleteRuntimeRequest::default())
                .await,
        ),
        "DeployFunction" => code(
            FunctionServiceClient::new(ch)
                .deploy_function(tokio_stream::iter(Vec::<DeployFunctionRequest>::new()))
                .await,
        ),
        "GetFunction" => code(
            FunctionServiceClient::new(ch)
                .get_function(GetFunctionRequest::default())
                .await,
        ),
        "ListFunctions" => code(
            FunctionServiceClient::new(ch)
                .list_functions(ListFunctionsRequest::default())
                .await,
        ),
        "DeleteFunction" => code(
            FunctionServiceClient::new(ch)
                .delete_function(DeleteFunctionRequest::default())
                .await,
        ),
        "ListFunctionVersions" => code(
            FunctionServiceClient::new(ch)
                .list_function_versions(ListFunctionVersionsRequest::default())
                .await,
        ),
        "RollbackFunction" => code(
            FunctionServiceClient::new(ch)
                .rollback_function(RollbackFunctionRequest::default())
                .await,
        ),
        "SetAlias" => code(
            FunctionServiceClient::new(ch)
                .set_alias(SetAliasRequest::default())
                .await,
        ),
        "ListAliases" => code(
            FunctionServiceClient::new(ch)
                .list_aliases(ListAliasesRequest::default())
                .await,
        ),
        "DeleteAlias" => code(
            FunctionServiceClient::new(ch)
                .delete_alias(DeleteAliasRequest::default())
                .await,
        ),
        "Invoke" => code(
            CallServiceClient::new(ch)
                .invoke(InvokeRequest::default())
                .await,
        ),
        "Submit" => code(
            CallServiceClient::new(ch)
                .submit(InvokeRequest::default())
                .await,
        ),
        "GetCall" => code(
            CallServiceClient::new(ch)
                .get_call(GetCallRequest::default())
                .await,
        ),
        "WaitCall" => code(
            CallServiceClient::new(ch)
                .wait_call(WaitCallRequest::default())
                .await,
        ),
        "ListCalls" => code(
            CallServiceClient::new(ch)
                .list_calls(ListCallsRequest::default())
                .await,
        ),
        "GetCallLogs" => code(
            CallServiceClient::new(ch)
                .get_call_logs(GetCallLogsRequest::default())
                .await,
        ),
        "CancelCall" => code(
            CallServiceClient::new(ch)
                .cancel_call(CancelCallRequest::default())
                .await,
        ),
        "FollowCallLogs" => code(
            CallServiceClient::new(ch)
                .follow_call_logs(FollowCallLogsRequest::default())
                .await,
        ),
        "GetCallStats" => code(
            CallServiceClient::new(ch)
                .get_call_stats(GetCallStatsRequest::default())
                .await,
        ),
        "ListNodes" => code(
            ClusterServiceClient::new(ch)
                .list_nodes(ListNodesRequest::default())
                .await,
        ),
        "DrainNode" => code(
            ClusterServiceClient::new(ch)
                .drain_node(DrainNodeRequest::default())
                .await,
        ),
        "CreateJoinToken" => code(
            ClusterServiceClient::new(ch)
                .create_join_token(CreateJoinTokenRequest::default())
                .await,
        ),
        "ListJoinTokens" => code(
            ClusterServiceClient::new(ch)
                .list_join_tokens(ListJoinTokensRequest::default())
                .await,
        ),
        "DeleteJoinToken" => code(
            ClusterServiceClient::new(ch)
                .delete_join_token(DeleteJoinTokenRequest::default())
                .await,
        ),
        "RemoveNode" => code(
            ClusterServiceClient::new(ch)
                .remove_node(RemoveNodeRequest::default())
                .await,
        ),
        "CreateToken" => code(
            AccessServiceClient::new(ch)
                .create_token(CreateTokenRequest::default())
                .await,
        ),
        "ListTokens" => code(
            AccessServiceClient::new(ch)
                .list_tokens(ListTokensRequest::default())
                .await,
        ),
        "DeleteToken" => code(
            AccessServiceClient::new(ch)
                .delete_token(DeleteTokenRequest::default())
                .await,
        ),
        "WhoAmI" => code(
            AccessServiceClient::new(ch)
                .who_am_i(WhoAmIRequest::default())
                .await,
        ),
        "CreateNamespace" => code(
            NamespaceServiceClient::new(ch)
                .create_namespace(CreateNamespaceRequest::default())
                .await,
        ),
        "UpdateNamespace" => code(
            NamespaceServiceClient::new(ch)
                .update_namespace(UpdateNamespaceRequest::default())
                .await,
        ),
        "DeleteNamespace" => code(
            NamespaceServiceClient::new(ch)
                .delete_namespace(DeleteNamespaceRequest::default())
                .await,
        ),
        "GetNamespace" => code(
            NamespaceServiceClient::new(ch)
                .get_namespace(GetNamespaceRequest::default())
                .await,
        ),
        "PutSecret" => code(
            SecretServiceClient::new(ch)
                .put_secret(PutSecretRequest::default())
                .await,
        ),
        "GetSecret" => code(
            SecretServiceClient::new(ch)
                .get_secret(GetSecretRequest::default())
                .await,
        ),
        "ListSecrets" => code(
            SecretServiceClient::new(ch)
                .list_secrets(ListSecretsRequest::default())
                .await,
        ),
        "DeleteSecret" => code(
            SecretServiceClient::new(ch)
                .delete_secret(DeleteSecretRequest::default())
                .await,
        ),
        "ListNamespaces" => code(
            NamespaceServiceClient::new(ch)
                .list_namespaces(ListNamespacesRequest::default())
                .await,
        ),
        other => panic!("no such method in the table: {other}"),
    }
}

/// Every method of the public API and the least role it needs (1
/// invoker, 2 developer, 3 admin), as docs/security.md states it.
const API: &[(&str, u8)] = &[
    ("RegisterRuntime", 4),
    ("DeleteRuntime", 4),
    ("ListNodes", 4),
    ("DrainNode", 4),
    ("CreateJoinToken", 4),
    ("ListJoinTokens", 4),
    ("DeleteJoinToken", 4),
    ("RemoveNode", 4),
    ("CreateToken", 4),
    ("ListTokens", 4),
    ("DeleteToken", 4),
    ("CreateNamespace", 4),
    ("UpdateNamespace", 4),
    ("DeleteNamespace", 4),
    ("GetRuntime", 3),
    ("ListRuntimes", 3),
    ("DeployFunction", 3),
    ("GetFunction", 3),
    ("ListFunctions", 3),
    ("DeleteFunction", 3),
    ("ListFunctionVersions", 3),
    ("RollbackFunction", 3),
    ("SetAlias", 3),
    ("ListAliases", 3),
    ("DeleteAlias", 3),
    ("GetCallStats", 3),
    ("PutSecret", 3),
    ("GetSecret", 3),
    ("ListSecrets", 3),
    ("DeleteSecret", 3),
    ("Invoke", 1),
    ("Submit", 1),
    ("GetCall", 2),
    ("WaitCall", 2),
    ("ListCalls", 2),
    ("GetCallLogs", 2),
    ("CancelCall", 2),
    ("FollowCallLogs", 2),
    ("WhoAmI", 2),
    ("GetNamespace", 2),
    ("ListNamespaces", 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_who_calls() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let url = stack.endpoint.clone();
    let public_invoker = create_token(&stack, Role::PublicInvoker, 0).await?;
    let invoker = create_token(&stack, Role::Invoker, 0).await?;
    let developer = create_token(&stack, Role::Developer, 0).await?;
    let expired = create_token(&stack, Role::Admin, 1).await?;
    let revoked = create_token(&stack, Role::Admin, 0).await?;
    AccessServiceClient::new(stack.channel().await)
        .delete_token(DeleteTokenRequest {
            id: revoked.split('.').next().unwrap().into(),
        })
        .await?;
    // A token of the right shape that was never issued.
    let garbage = format!("{}.{}", "0".repeat(16), "f".repeat(64));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut refusals = 0;
    for caller in [
        Caller::Nobody,
        Caller::Garbage,
        Caller::Revoked,
        Caller::Expired,
        Caller::PublicInvoker,
        Caller::Invoker,
        Caller::Developer,
        Caller::Admin,
    ] {
        let token = match caller {
            Caller::Nobody => None,
            Caller::Garbage => Some(garbage.as_str()),
            Caller::Revoked => Some(revoked.as_str()),
            Caller::Expired => Some(expired.as_str()),
            Caller::PublicInvoker => Some(public_invoker.as_str()),
            Caller::Invoker => Some(invoker.as_str()),
            Caller::Developer => Some(developer.as_str()),
            Caller::Admin => Some(stack.auth.token.as_str()),
        };
        let channel = stack
            .auth
            .channel_with(&url, token, Some(Duration::from_secs(10)));
        for (method, need) in API {
            let code = call_rpc(channel.clone(), method).await;
            let expected = if caller.rank() == 0 {
                Some(Code::Unauthenticated)
            } else if caller.rank() < *need {
                Some(Code::PermissionDenied)
            } else {
                None
            };
            match expected {
                Some(want) => {
                    refusals += 1;
                    assert_eq!(code, want, "{caller:?} calling {method}")
                }
                None => assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{caller:?} calling {method} was refused: {code:?}"
                ),
            }
        }
    }
    eprintln!("{refusals} refusals checked over {} methods", API.len());

    // A method outside the API is refused even to an admin.
    let admin = stack.channel().await;
    let mut grpc = tonic::client::Grpc::new(admin);
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static("/faas.v1.CallService/Nope");
    let status = grpc
        .unary::<_, WhoAmIResponse, _>(
            tonic::Request::new(WhoAmIRequest {}),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("an unknown method");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // faasctl: exit 7 without credentials, and whoami with them.
    let out = stack
        .faasctl()
        .env_remove("FAAS_TOKEN")
        .args(["fn", "ls"])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = stack.faasctl().args(["whoami", "-o", "json"]).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admin\""));

    // No secret is stored: etcd holds the admin token's hash, not the token.
    let mut etcd = stack.etcd_client().await?;
    let all = etcd
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    let secret = stack.auth.token.split('.').nth(1).unwrap().to_string();
    for kv in all.kvs() {
        assert!(
            !String::from_utf8_lossy(kv.value()).contains(&secret),
            "{} holds the token's secret",
            String::from_utf8_lossy(kv.key())
        );
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoker_sees_only_its_own_calls() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let alice = create_token(&stack, Role::Invoker, 0).await?;
    let bob = create_token(&stack, Role::Invoker, 0).await?;
    let developer = create_token(&stack, Role::Developer, 0).await?;
    let as_ = |token: &str| {
        CallServiceClient::new(stack.auth.channel_with(
            &stack.endpoint,
            Some(token),
            Some(Duration::from_secs(30)),
        ))
    };
    let call = as_(&alice)
        .invoke(InvokeRequest {
            function: "hello".into(),
            params_json: r#"{"name":"alice"}"#.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    let id = call.id.clone();

    // Bob: as if the call did not exist.
    let mut b = as_(&bob);
    let refused = b
        .get_call(GetCallRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = b
        .wait_call(WaitCallRequest {
            id: id.clone(),
            timeout_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = b
        .get_call_logs(GetCallLogsRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let listed = b
        .list_calls(ListCallsRequest::default())
        .await?
        .into_inner();
    assert!(listed.calls.iter().all(|c| c.id != id), "{listed:?}");

    // Alice and a developer see it.
    let mut a = as_(&alice);
    assert!(a
        .get_call(GetCallRequest { id: id.clone() })
        .await?
        .into_inner()
        .result_json
        .contains("alice"));
    let listed = a
        .list_calls(ListCallsRequest::default())
        .await?
        .into_inner();
    assert!(listed.calls.iter().any(|c| c.id == id), "{listed:?}");
    let mut d = as_(&developer);
    assert_eq!(
        d.get_call(GetCallRequest { id: id.clone() })
            .await?
            .into_inner()
            .owner,
        call.owner
    );
    stack.shutdown().await
}

/// A node's credentials: a key made here, a certificate from a join.
async fn join(stack: &Stack, node: &str, token: &str) -> Result<ClientTls, tonic::Status> {
    let (key_pem, csr_pem) = faas_pki::ca::node_key_and_csr(node).expect("a key");
    let channel = stack
        .auth
        .channel_with(&stack.endpoint, None, Some(Duration::from_secs(10)));
    let joined = NodeJoinServiceClient::new(channel)
        .join(JoinRequest {
            token: token.into(),
            node: node.into(),
            csr_pem,
        })
        .await?
        .into_inner();
    Ok(ClientTls {
        ca_pem: Some(joined.ca_pem),
        identity: Some((joined.cert_pem, key_pem)),
    })
}

fn node_channel(stack: &Stack, tls: &ClientTls) -> tonic::transport::Channel {
    faas_pki::client::endpoint(&stack.endpoint, tls)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Opens a session with `hello`; the stream of operations, or the refusal.
async fn open_session(
    channel: tonic::transport::Channel,
    hello: AgentHello,
    then: Vec<AgentMessage>,
) -> Result<
    (
        tonic::Streaming<ControlMessage>,
        tokio::sync::mpsc::Sender<AgentMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    for m in then {
        tx.send(m).await.unwrap();
    }
    let inbound = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((inbound, tx))
}

/// Waits for call `id` to end, and checks that it ended with its real
/// result, from node-0, not the one a rogue node forged.
async fn assert_real_result(
    calls: &mut CallServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<()> {
    let done = calls
        .wait_call(WaitCallRequest {
            id: id.to_string(),
            timeout_ms: 30_000,
        })
        .await?
        .into_inner();
    let mut last = None;
    futures::pin_mut!(done);
    while let Some(c) = futures::StreamExt::next(&mut done).await {
        last = Some(c?);
    }
    let last = last.expect("a final call");
    assert_eq!(last.status(), CallStatus::Succeeded, "{last:?}");
    assert_eq!(last.node, "node-0", "{last:?}");
    assert!(!last.result_json.contains("forged"), "{last:?}");
    Ok(())
}

fn hello(node: &str, running_calls: Vec<String>) -> AgentHello {
    AgentHello {
        node: node.into(),
        spots: 1,
        version: "rogue".into(),
        running_calls,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_who_its_certificate_says_and_touches_only_its_calls() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("sleeps", "python3", &fixture_dir("py-sleep"), &[])?;
    let join_token = ClusterServiceClient::new(stack.channel().await)
        .create_join_token(CreateJoinTokenRequest::default())
        .await?
        .into_inner()
        .token;

    // No certificate: no session, whatever token comes with it.
    let anonymous = stack
        .auth
        .channel_with(&stack.endpoint, Some(&stack.auth.token), None);
    let refused = AgentServiceClient::new(anonymous)
        .session(tokio_stream::iter(vec![AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello("node-0", vec![]))),
        }]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Joins: a wrong token, then a taken name, are refused.
    let wrong = format!("{}.{}", &join_token[..16], "0".repeat(64));
    assert_eq!(
        join(&stack, "rogue", &wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let taken = join(&stack, "node-0", &join_token).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    // A valid node of its own.
    let rogue = join(&stack, "rogue", &join_token).await?;
    let channel = node_channel(&stack, &rogue);
    // It cannot say it is another node.
    let refused = open_session(channel.clone(), hello("node-0", vec![]), vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A call running on node-0.
    let mut calls = CallServiceClient::new(stack.channel().await);
    let id = calls
        .submit(InvokeRequest {
            function: "sleeps".into(),
            params_json: r#"{"seconds": 3}"#.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .call_id;
    wait_running(&mut calls, &id, Duration::from_secs(30)).await?;
    // Someone follows its logs (the leader then relays the chunks of the
    // node that runs it).
    let mut follow = calls
        .follow_call_logs(FollowCallLogsRequest { id: id.clone() })
        .await?
        .into_inner();
    let followed = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(chunk)) = follow.message().await {
            seen.extend_from_slice(&chunk.data);
            if chunk.r#final {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The rogue claims it in its hello, sends forged output for its
    // followers and a forged result.
    let mut forgeries: Vec<AgentMessage> = (0..5)
        .map(|i| AgentMessage {
            msg: Some(agent_message::Msg::Log(LogChunk {
                call_id: id.clone(),
                offset: i * 16,
                data: b"forged log line\n".to_vec(),
            })),
        })
        .collect();
    forgeries.push(AgentMessage {
        msg: Some(agent_message::Msg::Result(CallResult {
            call_id: id.clone(),
            status: CallStatus::Succeeded as i32,
            result_json: r#""forged""#.into(),
            ..Default::default()
        })),
    });
    let (mut ops, _keep) =
        open_session(channel.clone(), hello("rogue", vec![id.clone()]), forgeries).await?;
    assert_real_result(&mut calls, &id).await?;
    let followed = tokio::time::timeout(Duration::from_secs(30), followed).await??;
    assert!(
        !followed.contains("forged"),
        "a follower got another node's forged output: {followed:?}"
    );

    // Renewal: a node renews with its current certificate only (the one
    // it replaced still holds its open sessions, but renews nothing).
    let renew = |tls: ClientTls| {
        let channel = node_channel(&stack, &tls);
        async move {
            let (_, csr_pem) = faas_pki::ca::node_key_and_csr("rogue").expect("a key");
            NodeJoinServiceClient::new(channel)
                .renew_certificate(RenewCertificateRequest { csr_pem })
                .await
        }
    };
    let renewed = renew(rogue.clone()).await?.into_inner();
    assert!(!renewed.cert_pem.is_empty());
    let stale = renew(rogue.clone()).await.unwrap_err();
    assert_eq!(stale.code(), Code::Unauthenticated, "{stale:?}");

    // Removed: its open session ends, and it cannot open another.
    ClusterServiceClient::new(stack.channel().await)
        .remove_node(RemoveNodeRequest {
            name: "rogue".into(),
        })
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = ops.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the removed node's session stayed open");
    let refused = open_session(node_channel(&stack, &rogue), hello("rogue", vec![]), vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // Node-0 still works.
    assert!(stack
        .list_nodes()
        .await?
        .nodes
        .iter()
        .any(|n| n.name == "node-0" && n.connected));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_certificate_is_refused_and_agents_renew_theirs() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        controlplane_args: vec!["--node-cert-ttl".into(), "6s".into()],
        ..StackOptions::default()
    })
    .await?;
    let join_token = ClusterServiceClient::new(stack.channel().await)
        .create_join_token(CreateJoinTokenRequest::default())
        .await?
        .into_inner()
        .token;
    let short = join(&stack, "short", &join_token).await?;
    open_session(node_channel(&stack, &short), hello("short", vec![]), vec![]).await?;
    // Past its life (and the 5 minutes it is backdated do not extend it).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let refused = open_session(node_channel(&stack, &short), hello("short", vec![]), vec![]).await;
    assert!(
        refused.is_err(),
        "a session opened with an expired certificate"
    );
    eprintln!("expired certificate: {:?}", refused.err());

    // The stack's agent renewed its own in the meantime, at two thirds of
    // each certificate's life (about every 4 s), not in a loop.
    let log = std::fs::read_to_string(stack.dir.path().join("logs/agent-0.log"))?;
    let renewals = log.matches("node certificate renewed").count();
    eprintln!("renewals by the agent: {renewals}");
    assert!((1..=4).contains(&renewals), "{renewals} renewals");
    // Restarted, it connects with the one it keeps.
    stack.kill_agent(0).await;
    stack.start_agent(0).await;
    stack.wait_agents_connected(Duration::from_secs(30)).await?;
    stack.shutdown().await
}

/// etcd holds the cluster CA's key and the hashes of every token: only the
/// control plane's certificate (from etcd's own CA) opens it. Plain TCP, TLS
/// without a certificate, and a node's certificate from the cluster CA are
/// all turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_admits_only_the_control_planes_certificate() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        agents: 0,
        ..StackOptions::default()
    })
    .await?;
    let pki = stack.etcd_pki();
    let url = stack.etcd_endpoint().to_string();
    let options = |tls: Option<etcd_client::TlsOptions>| {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3));
        match tls {
            Some(tls) => options.with_tls(tls),
            None => options,
        }
    };
    let etcd_ca = || {
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(pki.ca_cert()).unwrap(),
        ))
    };
    // Reads the key every replica reads at start (the cluster CA and its
    // key): Ok(true) if it came back.
    let read_ca = |url: String, options: etcd_client::ConnectOptions| async move {
        let mut client = etcd_client::Client::connect([url], Some(options)).await?;
        let got = client.get("/faas/v1/pki/ca", None).await?;
        anyhow::Ok(!got.kvs().is_empty())
    };

    // The control plane's certificate: the control.
    let ctl = etcd_ca().identity(etcd_client::Identity::from_pem(
        std::fs::read(pki.client_cert())?,
        std::fs::read(pki.client_key())?,
    ));
    assert!(read_ca(url.clone(), options(Some(ctl))).await?);

    // Plain HTTP/2 on the same port.
    let plain = url.replace("https://", "http://");
    assert!(read_ca(plain, options(None)).await.is_err());
    // TLS, trusting etcd's CA, but no certificate of its own.
    let anonymous = read_ca(url.clone(), options(Some(etcd_ca()))).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // A node's certificate (the cluster CA's): a node is no etcd client.
    let join_token = ClusterServiceClient::new(stack.channel().await)
        .create_join_token(CreateJoinTokenRequest::default())
        .await?
        .into_inner()
        .token;
    let node = join(&stack, "rogue", &join_token).await?;
    let (cert, key) = node.identity.expect("a node certificate");
    let as_node = etcd_ca().identity(etcd_client::Identity::from_pem(cert, key));
    let refused = read_ca(url.clone(), options(Some(as_node))).await;
    assert!(refused.is_err(), "{refused:?}");

    // The keys are root's alone.
    use std::os::unix::fs::PermissionsExt;
    for path in [
        pki.dir.clone(),
        pki.ca_key(),
        pki.client_key(),
        pki.member_key(),
    ] {
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o077;
        assert_eq!(mode, 0, "{} is open to others", path.display());
    }

    // The control plane beside etcd reaches it on its unix socket: plain
    // gRPC, no certificate; the socket's directory is what keeps others out.
    let socket = stack.etcd_socket(0);
    let dir = socket.parent().expect("a socket in a directory");
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o077;
    assert_eq!(mode, 0, "{} is open to others", dir.display());
    // As root (the control plane's user) it opens, with no certificate.
    {
        let socket = socket.clone();
        let channel = tonic::transport::Endpoint::from_static("http://etcd.local")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await?;
        let mut client =
            etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?;
        let got = client.get("/faas/v1/pki/ca", None).await?;
        assert!(!got.kvs().is_empty(), "root reads etcd on its socket");
    }
    // Another local user cannot even connect: the control plane's own
    // etcd probe, run as nobody against the socket, is refused by the
    // kernel (connect: EACCES), before etcd sees anything.
    // The binary is copied where nobody may run it (the build's directory
    // may be root's alone, as in CI).
    let probe_dir = tempfile::Builder::new()
        .prefix("faas-probe-")
        .tempdir_in("/dev/shm")?;
    let probe_bin = probe_dir.path().join("faas-controlplane");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(probe_dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(faas_tests::bin_dir()?.join("faas-controlplane"), &probe_bin)?;
        std::fs::set_permissions(&probe_bin, std::fs::Permissions::from_mode(0o755))?;
    }
    let probe = {
        use std::os::unix::process::CommandExt;
        // (std drops root's supplementary groups when it sets the uid.)
        std::process::Command::new(&probe_bin)
            .uid(UNPRIVILEGED)
            .gid(UNPRIVILEGED)
            .env("RUST_LOG", "error")
            .arg("--etcd")
            .arg(format!("unix://{}", socket.display()))
            .arg("etcd-health")
            .output()?
    };
    let said = String::from_utf8_lossy(&probe.stderr);
    assert!(
        !probe.status.success(),
        "nobody reached etcd's socket: {said}"
    );
    assert!(
        said.contains("Permission denied"),
        "nobody's probe failed, but not for want of permission: {said}"
    );
    stack.shutdown().await
}

/// A local user with no rights of its own (nobody).
const UNPRIVILEGED: u32 = 65534;

/// A node cannot claim a call never handed to it: a queued call listed in
/// a rogue node's hello (with no proof, or a made-up one) stays queued,
/// the rogue's forged result for it is refused, and it runs where the
/// leader places it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_claim_a_queued_call() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 1,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("sleeps", "python3", &fixture_dir("py-sleep"), &[])?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    let submitter = calls.clone();
    let submit = |seconds: f64| {
        let mut calls = submitter.clone();
        async move {
            anyhow::Ok(
                calls
                    .submit(InvokeRequest {
                        function: "sleeps".into(),
                        params_json: format!(r#"{{"seconds": {seconds}}}"#),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .call_id,
            )
        }
    };
    // A rogue node, drained by the admin so that the leader places
    // nothing on it: whatever it gets, it only claims.
    let join_token = ClusterServiceClient::new(stack.channel().await)
        .create_join_token(CreateJoinTokenRequest::default())
        .await?
        .into_inner()
        .token;
    let rogue = join(&stack, "rogue", &join_token).await?;
    let (_first, _keep_first) =
        open_session(node_channel(&stack, &rogue), hello("rogue", vec![]), vec![]).await?;
    ClusterServiceClient::new(stack.channel().await)
        .drain_node(DrainNodeRequest {
            name: "rogue".into(),
            undrain: false,
        })
        .await?;

    // The only spot of node-0 is busy: the second call waits queued.
    let busy = submit(4.0).await?;
    wait_running(&mut calls, &busy, Duration::from_secs(30)).await?;
    let queued = submit(0.1).await?;
    let c = calls
        .get_call(GetCallRequest { id: queued.clone() })
        .await?
        .into_inner();
    assert_eq!(c.status(), CallStatus::Queued, "{c:?}");

    // Its next session claims the queued call and sends a result for it.
    let forged = AgentMessage {
        msg: Some(agent_message::Msg::Result(CallResult {
            call_id: queued.clone(),
            status: CallStatus::Succeeded as i32,
            result_json: r#""forged""#.into(),
            dispatch_proof: "00".repeat(32),
            ..Default::default()
        })),
    };
    let mut claim = hello("rogue", vec![queued.clone()]);
    claim
        .dispatch_proofs
        .insert(queued.clone(), "00".repeat(32));
    let (_ops, _keep) = open_session(node_channel(&stack, &rogue), claim, vec![forged]).await?;

    assert_real_result(&mut calls, &queued).await?;
    stack.shutdown().await
}

/// The status of a request to the registry, over its TLS, with an
/// optional bearer token.
async fn registry_status(stack: &Stack, method: &str, path: &str, token: Option<&str>) -> u16 {
    stack
        .registry_request(method, path, token, &[])
        .await
        .map(|(status, _)| status)
        .unwrap_or(0)
}

/// The registry takes only tokens a control plane signed, for the
/// repositories and actions they name: anonymous requests, tokens of
/// another key, a node's pull token on another repository, and a pull
/// token asked to delete or push are all refused (401), while calls still
/// pull what they need with the tokens the leader hands their nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_takes_only_the_control_planes_tokens() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let repo = "faas/functions/hello";
    // Reads (pull): the tag list; the manifest path for a delete.
    let tags = format!("/v2/{repo}/tags/list");
    let manifest = format!("/v2/{repo}/manifests/v1");
    let signer = faas_pki::registry::TokenSigner::load(&stack.registry_pki())?;
    let ttl = Duration::from_secs(60);
    let mint = |access: faas_pki::registry::Access| signer.mint("test", &[access], ttl).unwrap();
    let all = mint(faas_pki::registry::Access::all(repo));
    let pull = mint(faas_pki::registry::Access::pull(repo));
    let other = mint(faas_pki::registry::Access::pull("faas/functions/other"));
    let foreign_dir = tempfile::tempdir()?;
    faas_pki::registry::ensure_signer(foreign_dir.path())?;
    let foreign = faas_pki::registry::TokenSigner::load(foreign_dir.path())?.mint(
        "test",
        &[faas_pki::registry::Access::all(repo)],
        ttl,
    )?;

    // The control: the control plane's kind of token reads.
    assert_eq!(registry_status(&stack, "GET", &tags, Some(&all)).await, 200);
    assert_eq!(
        registry_status(&stack, "GET", &tags, Some(&pull)).await,
        200
    );
    // Nobody else.
    for path in ["/v2/_catalog".to_string(), tags.clone(), manifest.clone()] {
        assert_eq!(
            registry_status(&stack, "GET", &path, None).await,
            401,
            "{path}"
        );
    }
    assert_eq!(
        registry_status(&stack, "GET", &tags, Some(&foreign)).await,
        401
    );
    assert_eq!(
        registry_status(&stack, "GET", &tags, Some("garbage")).await,
        401
    );
    assert_eq!(
        registry_status(&stack, "GET", &tags, Some(&other)).await,
        401
    );
    // A pull token neither pushes nor deletes.
    let upload = format!("/v2/{repo}/blobs/uploads/");
    assert_eq!(registry_status(&stack, "POST", &upload, None).await, 401);
    assert_eq!(
        registry_status(&stack, "POST", &upload, Some(&pull)).await,
        401
    );
    assert_eq!(
        registry_status(&stack, "DELETE", &manifest, Some(&pull)).await,
        401
    );
    assert_eq!(
        registry_status(&stack, "POST", &upload, Some(&all)).await,
        202
    );

    // Tokens travel only inside TLS: a plain-HTTP request gets no HTTP
    // answer from the registry (Go's "client sent an HTTP request to an
    // HTTPS server" 400), never a 401 or a 200.
    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = stack.registry_addr();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!(
                    "GET {tags} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {all}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    assert!(
        plain.starts_with("HTTP/1.0 400") && plain.contains("HTTPS"),
        "plain HTTP answered {plain:?}"
    );
    // The registry's certificate is of its own CA: a client that trusts
    // the cluster CA (which signs every node) does not take it, so a
    // node's key cannot stand in for the registry.
    let (host, port) = stack.registry_addr().rsplit_once(':').unwrap();
    let cluster_ca = std::fs::read_to_string(stack.ca_file())?;
    assert!(
        faas_pki::client::connect_tls(host, port.parse()?, &cluster_ca)
            .await
            .is_err()
    );
    // The node was handed the registry's CA with its certificate, and
    // keeps it private.
    let kept = stack.agent_state_dir(0).join("pki/registry-ca.crt");
    let registry_ca = std::fs::read_to_string(
        faas_pki::registry::RegistryFiles::new(stack.registry_pki()).tls_ca(),
    )?;
    assert_eq!(std::fs::read_to_string(&kept)?, registry_ca);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept)?.permissions().mode() & 0o777,
        0o600
    );

    // Calls still run: the node pulls over TLS with the CA it was handed
    // and the tokens it is handed.
    let mut calls = CallServiceClient::new(stack.channel().await);
    let call = calls
        .invoke(InvokeRequest {
            function: "hello".into(),
            params_json: r#"{"name": "registry"}"#.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    stack.shutdown().await
}

/// A join token joins as many nodes as it was made for (one unless told),
/// no more, even when the joins race; an admin lists and revokes tokens;
/// expired tokens are swept from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_bounded_revocable_and_swept() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        agents: 1,
        controlplane_args: vec!["--call-retention-every".into(), "1s".into()],
        ..StackOptions::default()
    })
    .await?;
    let mut cluster = ClusterServiceClient::new(stack.channel().await);
    let create = |uses: u32, ttl_ms: u64| CreateJoinTokenRequest {
        uses,
        ttl_ms,
        description: format!("{uses} uses"),
    };

    // The default: one node.
    let single = cluster
        .create_join_token(create(0, 0))
        .await?
        .into_inner()
        .token;
    join(&stack, "first", &single).await?;
    let again = join(&stack, "second", &single).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");

    // Three uses, five joins at once: exactly three get in.
    let three = cluster
        .create_join_token(create(3, 0))
        .await?
        .into_inner()
        .token;
    let id = three.split('.').next().unwrap().to_string();
    let listed = cluster
        .list_join_tokens(ListJoinTokensRequest {})
        .await?
        .into_inner()
        .tokens;
    let entry = listed.iter().find(|t| t.id == id).expect("listed");
    assert_eq!(entry.uses_left, 3);
    let joins = futures::future::join_all((0..5).map(|i| {
        let (stack, three) = (&stack, three.clone());
        async move { join(stack, &format!("racer-{i}"), &three).await }
    }))
    .await;
    let joined = joins.iter().filter(|r| r.is_ok()).count();
    assert_eq!(joined, 3, "{joins:?}");
    for refused in joins.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // Used up: gone from the list.
    let listed = cluster
        .list_join_tokens(ListJoinTokensRequest {})
        .await?
        .into_inner()
        .tokens;
    assert!(listed.iter().all(|t| t.id != id), "{listed:?}");

    // A failed join (a taken name) gives its use back.
    let spare = cluster
        .create_join_token(create(1, 0))
        .await?
        .into_inner()
        .token;
    let taken = join(&stack, "first", &spare).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    join(&stack, "third", &spare).await?;

    // Revoked: it joins nobody; revoking twice is NOT_FOUND.
    let revoked = cluster
        .create_join_token(create(5, 0))
        .await?
        .into_inner()
        .token;
    let revoked_id = revoked.split('.').next().unwrap().to_string();
    cluster
        .delete_join_token(DeleteJoinTokenRequest {
            id: revoked_id.clone(),
        })
        .await?;
    let refused = join(&stack, "fourth", &revoked).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let missing = cluster
        .delete_join_token(DeleteJoinTokenRequest { id: revoked_id })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Too many uses: a clear error.
    let bad = cluster
        .create_join_token(create(100_000, 0))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // Expired: swept from etcd by the leader.
    let brief = cluster
        .create_join_token(create(1, 1000))
        .await?
        .into_inner()
        .token;
    let key = format!("/faas/v1/join-tokens/{}", brief.split('.').next().unwrap());
    let mut etcd = stack.etcd_client().await?;
    assert_eq!(etcd.get(key.as_str(), None).await?.kvs().len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !etcd.get(key.as_str(), None).await?.kvs().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "an expired join token stayed in etcd"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.shutdown().await
}

/// gRPC server reflection (issue 13: grpcurl lists and calls the API):
/// the public services to any token holder, not the nodes' services, and
/// nothing to a caller without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_api_to_token_holders() -> anyhow::Result<()> {
    use prost::Message as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    async fn ask(ch: Channel, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
        let mut replies = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            }]))
            .await?
            .into_inner();
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal("no reply"))?;
        reply
            .message_response
            .ok_or_else(|| tonic::Status::internal("an empty reply"))
    }

    let stack = Stack::start(StackOptions::default()).await?;
    let url = stack.endpoint.clone();
    let invoker = create_token(&stack, Role::Invoker, 0).await?;
    let channel = stack
        .auth
        .channel_with(&url, Some(&invoker), Some(Duration::from_secs(10)));

    let Ok(MessageResponse::ListServicesResponse(list)) =
        ask(channel.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for public in faas_proto::PUBLIC_SERVICES {
        assert!(
            names.iter().any(|n| n == public),
            "{public} not listed: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    for hidden in ["faas.v1.AgentService", "faas.v1.NodeJoinService"] {
        assert!(
            !names.iter().any(|n| n == hidden),
            "{hidden} listed: {names:?}"
        );
    }

    // The schema of a service: what grpcurl needs to call it.
    let Ok(MessageResponse::FileDescriptorResponse(files)) = ask(
        channel.clone(),
        MessageRequest::FileContainingSymbol("faas.v1.CallService".into()),
    )
    .await
    else {
        panic!("no descriptor for faas.v1.CallService");
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "CallService")
        .flat_map(|s| s.method)
        .map(|m| m.name().to_string())
        .collect();
    for m in ["Invoke", "Submit", "GetCall", "WaitCall"] {
        assert!(methods.iter().any(|n| n == m), "{m} missing: {methods:?}");
    }

    // grpcurl's fallback, v1alpha, answers the same way.
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            channel.clone(),
        );
    let mut replies = alpha
        .server_reflection_info(tokio_stream::iter(vec![
            tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await?
        .into_inner();
    assert!(replies.message().await?.is_some(), "v1alpha gave no reply");

    // No token: nothing, not even the list.
    let nobody = stack
        .auth
        .channel_with(&url, None, Some(Duration::from_secs(10)));
    let refused = ask(nobody, MessageRequest::ListServices(String::new()))
        .await
        .expect_err("reflection without a token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    stack.shutdown().await
}
