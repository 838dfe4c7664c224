//! Netlink attributes (TLVs): a bounds-checked iterator for reading and a writer for building.
//!
//! Reading never copies: each [`Attr`] borrows its payload from the receive buffer. Attribute
//! types are masked with [`TYPE_MASK`] because the kernel sets `NLA_F_NESTED` on nests.

use crate::error::ParseError;

pub const NLA_HDRLEN: usize = 4;
pub const F_NESTED: u16 = 1 << 15;
pub const F_NET_BYTEORDER: u16 = 1 << 14;
pub const TYPE_MASK: u16 = !(F_NESTED | F_NET_BYTEORDER);

#[inline]
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One attribute: its type (flags masked off) and payload.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub kind: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    #[inline]
    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], ParseError> {
        self.payload
            .get(..N)
            .and_then(|s| s.try_into().ok())
            .ok_or(ParseError::BadLength {
                what,
                len: self.payload.len(),
                expected: N,
            })
    }
    #[inline]
    pub fn u8(&self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.fixed::<1>(what)?[0])
    }
    #[inline]
    pub fn be16(&self, what: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.fixed(what)?))
    }
    #[inline]
    pub fn be32(&self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.fixed(what)?))
    }
    #[inline]
    pub fn be64(&self, what: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.fixed(what)?))
    }
    #[inline]
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))] // tests and the fuzzer
    pub fn ne32(&self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_ne_bytes(self.fixed(what)?))
    }
    #[inline]
    pub fn bytes<const N: usize>(&self, what: &'static str) -> Result<[u8; N], ParseError> {
        if self.payload.len() != N {
            return Err(ParseError::BadLength {
                what,
                len: self.payload.len(),
                expected: N,
            });
        }
        self.fixed(what)
    }
    /// The attributes nested inside this one.
    #[inline]
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.payload)
    }
}

/// Iterates the attributes of a buffer. A malformed header ends the iteration with an error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLA_HDRLEN {
            let have = self.buf.len();
            self.buf = &[];
            return Some(Err(ParseError::Truncated {
                what: "attribute header",
                need: NLA_HDRLEN,
                have,
            }));
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            let have = self.buf.len();
            self.buf = &[];
            return Some(Err(ParseError::Truncated {
                what: "attribute",
                need: len.max(NLA_HDRLEN),
                have,
            }));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(Ok(Attr { kind, payload }))
    }
}

/// Builds netlink messages with attributes into a reusable byte buffer.
#[derive(Debug, Default, Clone)]
pub struct MsgWriter {
    buf: Vec<u8>,
}

impl MsgWriter {
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))] // tests and the fuzzer
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_capacity(n: usize) -> Self {
        MsgWriter {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn clear(&mut self) {
        self.buf.clear();
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    #[cfg_attr(not(test), allow(dead_code))] // tests
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Starts a netfilter netlink message (nlmsghdr + nfgenmsg). Returns its offset for
    /// [`end_msg`](Self::end_msg).
    pub fn begin_msg(
        &mut self,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        version: u8,
        res_id: u16,
    ) -> usize {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.push(family);
        self.buf.push(version);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Starts a bare netlink message without the nfgenmsg header (e.g. NLMSG_NOOP).
    pub fn begin_bare_msg(&mut self, kind: u16, flags: u16, seq: u32) -> usize {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        start
    }

    pub fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn put(&mut self, kind: u16, payload: &[u8]) {
        self.pad();
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
    }
    pub fn put_u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }
    pub fn put_be16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }
    pub fn put_be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }
    pub fn put_ne32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }
    pub fn begin_nest(&mut self, kind: u16) -> usize {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | F_NESTED).to_ne_bytes());
        start
    }
    /// Closes a nest; like the kernel's `nla_nest_end`, the length includes the padding of the
    /// last attribute.
    pub fn end_nest(&mut self, start: usize) {
        self.pad();
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_nested() {
        let mut w = MsgWriter::new();
        let n = w.begin_nest(1);
        w.put_be16(2, 0x1234);
        w.put_u8(3, 7);
        w.end_nest(n);
        w.put_be32(4, 99);
        let attrs: Vec<_> = Attrs::new(w.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].kind, 1);
        let inner: Vec<_> = attrs[0].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].be16("x").unwrap(), 0x1234);
        assert_eq!(inner[1].u8("y").unwrap(), 7);
        assert_eq!(attrs[1].be32("z").unwrap(), 99);
    }

    #[test]
    fn truncated_attribute_is_an_error() {
        let bytes = [8u8, 0, 1, 0, 1, 2];
        let r: Result<Vec<_>, _> = Attrs::new(&bytes).collect();
        assert!(matches!(r, Err(ParseError::Truncated { .. })));
        let bytes = [2u8, 0, 1, 0];
        let r: Result<Vec<_>, _> = Attrs::new(&bytes).collect();
        assert!(r.is_err());
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut w = MsgWriter::new();
        w.put(1, &[1, 2, 3]);
        let a = Attrs::new(w.as_bytes()).next().unwrap().unwrap();
        assert!(a.be32("v").is_err());
        assert!(a.bytes::<4>("v").is_err());
    }
}
