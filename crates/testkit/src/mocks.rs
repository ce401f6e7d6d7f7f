//! mockall mocks of the ports, for interaction checks ("called exactly N times"). Prefer the
//! [in-memory fakes](crate::memory) for everything else.
#![allow(missing_docs)]

use async_trait::async_trait;
use mockall::mock;
use validator_core::ports::{
    chain::Inference,
    ml_node::{MlNodeClient, ReplayError, ReplayRequest, ReplayResponse},
    model_lock::MlNode,
    payload_source::{PayloadError, PayloadSource, Payloads},
};

mock! {
    pub PayloadSource {}

    #[async_trait]
    impl PayloadSource for PayloadSource {
        async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError>;
    }
}

mock! {
    pub MlNodeClient {}

    #[async_trait]
    impl MlNodeClient for MlNodeClient {
        async fn replay(
            &self,
            node: &MlNode,
            request: &ReplayRequest,
        ) -> Result<ReplayResponse, ReplayError>;
    }
}
