# pragma version 0.4.3
# @title Devnet Permit2 (signature transfers)
# @notice The signature-transfer half of Uniswap's Permit2, written for the local devnet and installed at Permit2's
#         canonical address: `permitTransferFrom` and `permitWitnessTransferFrom` (single transfer), the unordered
#         nonce bitmap (`nonceBitmap`, `invalidateUnorderedNonces`), deadlines and `DOMAIN_SEPARATOR`, with the same
#         EIP-712 hashing, the same custom errors and the same checks in the same order, so x402 clients, facilitators
#         and the x402 upto proxy see what they see on a real chain. Tokens are pulled with the owner's ERC-20
#         allowance to this contract (there is no allowance-transfer half: the x402 schemes never use it).
#         No constructor and no immutables: the domain separator is computed from chain.id and self on every call.

interface IERC1271:
    def isValidSignature(hash: bytes32, signature: Bytes[SIGNATURE_MAX]) -> bytes4: view

struct TokenPermissions:
    token: address
    amount: uint256

struct PermitTransferFrom:
    permitted: TokenPermissions
    nonce: uint256
    deadline: uint256

struct SignatureTransferDetails:
    to: address
    requestedAmount: uint256

event UnorderedNonceInvalidation:
    owner: indexed(address)
    word: uint256
    mask: uint256

SIGNATURE_MAX: constant(uint256) = 1024  # 65-byte ECDSA, 64-byte EIP-2098, or a smart wallet's EIP-1271 blob
WITNESS_TYPE_MAX: constant(uint256) = 1024

DOMAIN_TYPEHASH: constant(bytes32) = keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)")
NAME_HASH: constant(bytes32) = keccak256("Permit2")
TOKEN_PERMISSIONS_TYPEHASH: constant(bytes32) = keccak256("TokenPermissions(address token,uint256 amount)")
PERMIT_TRANSFER_FROM_TYPEHASH: constant(bytes32) = keccak256(
    "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)TokenPermissions(address token,uint256 amount)"
)
# The witness variant's type is this stub followed by the caller's witness type string.
WITNESS_TYPEHASH_STUB: constant(String[100]) = (
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,"
)
ERC1271_MAGIC: constant(bytes4) = 0x1626ba7e
S_MASK: constant(uint256) = 57896044618658097711785492504343953926634992332820282019728792003956564819967  # 2**255 - 1

nonceBitmap: public(HashMap[address, HashMap[uint256, uint256]])


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, chain.id, self))


@internal
@pure
def _token_permissions_hash(permitted: TokenPermissions) -> bytes32:
    return keccak256(abi_encode(TOKEN_PERMISSIONS_TYPEHASH, permitted.token, permitted.amount))


@external
def permitTransferFrom(
    permit: PermitTransferFrom,
    transferDetails: SignatureTransferDetails,
    owner: address,
    signature: Bytes[SIGNATURE_MAX],
):
    data_hash: bytes32 = keccak256(
        abi_encode(
            PERMIT_TRANSFER_FROM_TYPEHASH,
            self._token_permissions_hash(permit.permitted),
            msg.sender,
            permit.nonce,
            permit.deadline,
        )
    )
    self._permit_transfer_from(permit, transferDetails, owner, data_hash, signature)


@external
def permitWitnessTransferFrom(
    permit: PermitTransferFrom,
    transferDetails: SignatureTransferDetails,
    owner: address,
    witness: bytes32,
    witnessTypeString: String[WITNESS_TYPE_MAX],
    signature: Bytes[SIGNATURE_MAX],
):
    type_hash: bytes32 = keccak256(concat(WITNESS_TYPEHASH_STUB, witnessTypeString))
    data_hash: bytes32 = keccak256(
        abi_encode(
            type_hash,
            self._token_permissions_hash(permit.permitted),
            msg.sender,
            permit.nonce,
            permit.deadline,
            witness,
        )
    )
    self._permit_transfer_from(permit, transferDetails, owner, data_hash, signature)


@external
def invalidateUnorderedNonces(wordPos: uint256, mask: uint256):
    """Burn nonces in bulk: every bit set in ``mask`` marks a nonce of word ``wordPos`` as used."""
    self.nonceBitmap[msg.sender][wordPos] |= mask
    log UnorderedNonceInvalidation(owner=msg.sender, word=wordPos, mask=mask)


@internal
def _permit_transfer_from(
    permit: PermitTransferFrom,
    details: SignatureTransferDetails,
    owner: address,
    data_hash: bytes32,
    signature: Bytes[SIGNATURE_MAX],
):
    if block.timestamp > permit.deadline:
        raw_revert(concat(method_id("SignatureExpired(uint256)"), convert(permit.deadline, bytes32)))
    if details.requestedAmount > permit.permitted.amount:
        raw_revert(concat(method_id("InvalidAmount(uint256)"), convert(permit.permitted.amount, bytes32)))
    self._use_unordered_nonce(owner, permit.nonce)
    digest: bytes32 = keccak256(concat(b"\x19\x01", self._domain_separator(), data_hash))
    self._verify(signature, digest, owner)
    self._safe_transfer_from(permit.permitted.token, owner, details.to, details.requestedAmount)


@internal
def _use_unordered_nonce(owner: address, nonce: uint256):
    # 256 nonces per word: the high 248 bits pick the word, the low 8 bits the bit. Each may be used once, in any order.
    word: uint256 = nonce >> 8
    bit: uint256 = 1 << (nonce & 255)
    flipped: uint256 = self.nonceBitmap[owner][word] ^ bit
    self.nonceBitmap[owner][word] = flipped
    if flipped & bit == 0:
        raw_revert(method_id("InvalidNonce()"))


@internal
@view
def _verify(signature: Bytes[SIGNATURE_MAX], digest: bytes32, claimed_signer: address):
    if claimed_signer.is_contract:
        magic: bytes4 = staticcall IERC1271(claimed_signer).isValidSignature(digest, signature)
        if magic != ERC1271_MAGIC:
            raw_revert(method_id("InvalidContractSignature()"))
        return
    r: bytes32 = empty(bytes32)
    s: bytes32 = empty(bytes32)
    v: uint256 = 0
    if len(signature) == 65:
        r = convert(slice(signature, 0, 32), bytes32)
        s = convert(slice(signature, 32, 32), bytes32)
        v = convert(slice(signature, 64, 1), uint256)
    elif len(signature) == 64:
        # EIP-2098 compact form: the top bit of the second word is v - 27.
        r = convert(slice(signature, 0, 32), bytes32)
        vs: uint256 = convert(slice(signature, 32, 32), uint256)
        s = convert(vs & S_MASK, bytes32)
        v = (vs >> 255) + 27
    else:
        raw_revert(method_id("InvalidSignatureLength()"))
    signer: address = ecrecover(digest, v, r, s)
    if signer == empty(address):
        raw_revert(method_id("InvalidSignature()"))
    if signer != claimed_signer:
        raw_revert(method_id("InvalidSigner()"))


@internal
def _safe_transfer_from(token: address, sender: address, receiver: address, amount: uint256):
    # A token may return true, or nothing; any failure, whatever its reason, becomes TRANSFER_FROM_FAILED.
    ok: bool = False
    answer: Bytes[32] = b""
    ok, answer = raw_call(
        token,
        abi_encode(sender, receiver, amount, method_id=method_id("transferFrom(address,address,uint256)")),
        max_outsize=32,
        revert_on_failure=False,
    )
    if ok and len(answer) > 0:
        ok = len(answer) == 32 and convert(answer, uint256) == 1
    assert ok, "TRANSFER_FROM_FAILED"
