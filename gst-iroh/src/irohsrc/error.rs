//! Why a viewer stops, in the two forms it is read: a GStreamer error domain and code an
//! application acts on (plus a `reason` in the error's details structure, `iroh-error`), and
//! the text a person reads. The table is in the README ("irohsrc errors").

use gst::subclass::prelude::*;

/// What went wrong, coarse enough for an application to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A property value cannot work; names the property.
    Settings(&'static str),
    /// The host already has `max-viewers` viewers.
    HostFull,
    /// The host does not accept the ticket's secret.
    BadSecret,
    /// The host revoked the ticket's secret.
    Revoked,
    /// The host removed this viewer.
    Kicked,
    /// The host cannot be reached, or did not answer the hello.
    Unreachable,
    /// The connection ended or broke after admission (host stopped, path lost, dropped as slow).
    Lost,
    /// The host speaks another protocol version.
    Version,
    /// The host broke the protocol, or reported that this viewer did.
    Protocol,
    /// This viewer's own iroh endpoint could not start.
    Endpoint,
}

impl Kind {
    /// The `reason` field of the error details: finer than the code (a revoked ticket and a
    /// wrong secret are both NOT_AUTHORIZED).
    pub(super) fn reason(self) -> &'static str {
        match self {
            Kind::Settings(_) => "settings",
            Kind::HostFull => "host-full",
            Kind::BadSecret => "bad-secret",
            Kind::Revoked => "revoked",
            Kind::Kicked => "kicked",
            Kind::Unreachable => "unreachable",
            Kind::Lost => "lost",
            Kind::Version => "version",
            Kind::Protocol => "protocol",
            Kind::Endpoint => "endpoint",
        }
    }
}

/// A kind and the text a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) kind: Kind,
    pub(super) text: String,
}

impl Failure {
    pub(super) fn new(kind: Kind, text: impl Into<String>) -> Self {
        Failure {
            kind,
            text: text.into(),
        }
    }

    /// The same failure with more text after it.
    pub(super) fn with_suffix(self, suffix: &str) -> Self {
        Failure {
            kind: self.kind,
            text: format!("{}{suffix}", self.text),
        }
    }

    /// Posts this failure as `imp`'s error message.
    pub(super) fn post(&self, imp: &super::imp::IrohSrc) {
        let mut details = gst::Structure::builder("iroh-error").field("reason", self.kind.reason());
        if let Kind::Settings(property) = self.kind {
            details = details.field("property", property);
        }
        let details = details.build();
        let text = &self.text;
        macro_rules! post {
            ($code:expr) => {
                gst::element_imp_error!(imp, $code, ("{text}"), details: details)
            };
        }
        match self.kind {
            Kind::Settings(_) => post!(gst::ResourceError::Settings),
            Kind::HostFull => post!(gst::ResourceError::Busy),
            Kind::BadSecret | Kind::Revoked => post!(gst::ResourceError::NotAuthorized),
            Kind::Unreachable => post!(gst::ResourceError::OpenRead),
            Kind::Kicked | Kind::Lost => post!(gst::ResourceError::Read),
            Kind::Version => post!(gst::StreamError::WrongType),
            Kind::Protocol => post!(gst::ResourceError::Failed),
            Kind::Endpoint => post!(gst::ResourceError::OpenReadWrite),
        }
    }
}
