//! Generated gRPC code, built from the `.proto` files in this crate's `proto/` directory at build
//! time (protox, then tonic-build): the validator's own `ValidationService` and the API node's
//! `NodeManager`. Messages, clients and servers; nothing hand-written but these modules.

/// The validator's own contract, `validator.v1` (`proto/validator/v1/validation_service.proto`):
/// a devshard host delegates its validations to the engine through it.
pub mod validator {
    /// Version 1 of the contract.
    #[allow(missing_docs)]
    pub mod v1 {
        tonic::include_proto!("validator.v1");
    }
}

/// The API node's NodeManager (`proto/nodemanager/nodemanager.proto`, upstream's package
/// `nodemanager`): locks on ML nodes, their capacity and the runtime configuration.
#[allow(missing_docs)]
pub mod nodemanager {
    tonic::include_proto!("nodemanager");
}
