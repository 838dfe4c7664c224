//! Netlink message framing: headers, flags, and a bounds-checked iterator over a datagram.

use crate::attr::{align4, Attrs};
use crate::error::ParseError;

pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
#[allow(dead_code)] // the protocol's table, kept whole
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
#[allow(dead_code)] // the protocol's table, kept whole (the fuzzer uses it)
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On an error message: extended-ack TLVs follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// On an error message: the original message was capped to its header.
pub const NLM_F_CAPPED: u16 = 0x100;

const NLMSGERR_ATTR_MSG: u16 = 1;

/// The fixed netlink message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// One netlink message: its header and the bytes after it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub header: Header,
    pub payload: &'a [u8],
    /// The whole message, header included.
    pub raw: &'a [u8],
}

/// The nfgenmsg that starts every netfilter payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NfGen {
    pub family: u8,
    pub version: u8,
    pub res_id: u16,
}

impl<'a> Message<'a> {
    /// Splits a netfilter payload into its nfgenmsg and its attributes.
    pub fn nfgen(&self) -> Result<(NfGen, Attrs<'a>), ParseError> {
        if self.payload.len() < NFGENMSG_LEN {
            return Err(ParseError::Truncated {
                what: "nfgenmsg",
                need: NFGENMSG_LEN,
                have: self.payload.len(),
            });
        }
        let g = NfGen {
            family: self.payload[0],
            version: self.payload[1],
            res_id: u16::from_be_bytes([self.payload[2], self.payload[3]]),
        };
        Ok((g, Attrs::new(&self.payload[NFGENMSG_LEN..])))
    }

    /// For NLMSG_ERROR: the (positive) errno, 0 for an ACK, and the extended-ack message if any.
    pub fn error(&self) -> Result<(i32, Option<&'a str>), ParseError> {
        if self.payload.len() < 4 {
            return Err(ParseError::Truncated {
                what: "nlmsgerr",
                need: 4,
                have: self.payload.len(),
            });
        }
        let code = i32::from_ne_bytes([
            self.payload[0],
            self.payload[1],
            self.payload[2],
            self.payload[3],
        ]);
        let mut msg = None;
        if self.header.flags & NLM_F_ACK_TLVS != 0 && self.payload.len() >= 4 + NLMSG_HDRLEN {
            // The echoed request: its header only when capped, otherwise the whole message.
            let inner_len = if self.header.flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                u32::from_ne_bytes([
                    self.payload[4],
                    self.payload[5],
                    self.payload[6],
                    self.payload[7],
                ]) as usize
            };
            let off = 4 + align4(inner_len);
            if let Some(tlvs) = self.payload.get(off..) {
                for a in Attrs::new(tlvs).flatten() {
                    if a.kind == NLMSGERR_ATTR_MSG {
                        let s = a.payload.split(|b| *b == 0).next().unwrap_or(&[]);
                        msg = std::str::from_utf8(s).ok();
                    }
                }
            }
        }
        Ok((code.saturating_neg(), msg))
    }

    /// For NLMSG_ERROR: the sequence number of the request it answers.
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))] // tests and the fuzzer
    pub fn error_seq(&self) -> Option<u32> {
        let b = self.payload.get(4 + 8..4 + 12)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Iterates the messages of one datagram.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Messages { buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let b = self.buf;
        if b.len() < NLMSG_HDRLEN {
            self.buf = &[];
            return Some(Err(ParseError::Truncated {
                what: "netlink header",
                need: NLMSG_HDRLEN,
                have: b.len(),
            }));
        }
        let header = Header {
            len: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            kind: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            pid: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        };
        let len = header.len as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.buf = &[];
            return Some(Err(ParseError::Truncated {
                what: "netlink message",
                need: len.max(NLMSG_HDRLEN),
                have: b.len(),
            }));
        }
        let payload = &b[NLMSG_HDRLEN..len];
        self.buf = &b[align4(len).min(b.len())..];
        Some(Ok(Message {
            header,
            payload,
            raw: &b[..len],
        }))
    }
}
