# pragma version 0.4.3
# @title Devnet USD Coin
# @notice A small USDC look-alike for the local devnet: ERC-20, EIP-712, EIP-2612 (permit, nonces) and EIP-3009
#         (transfer/receive/cancel with authorization). Domain name/version and revert strings follow Circle's FiatTokenV2 so x402
#         facilitators map failures to the same reasons as on a real chain.

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event AuthorizationUsed:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

event AuthorizationCanceled:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

NAME: constant(String[32]) = "USD Coin"
SYMBOL: constant(String[8]) = "USDC"
VERSION: constant(String[8]) = "2"
DECIMALS: constant(uint8) = 6

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
TRANSFER_WITH_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
RECEIVE_WITH_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256(
    "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
CANCEL_AUTHORIZATION_TYPEHASH: constant(bytes32) = keccak256("CancelAuthorization(address authorizer,bytes32 nonce)")
PERMIT_TYPEHASH: constant(bytes32) = keccak256(
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)
# secp256k1n / 2: larger s values are malleable and refused, as OpenZeppelin's ECDSA does.
HALF_ORDER: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168
BYTES_OVERLOAD: constant(bytes4) = method_id(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)", output_type=bytes4
)

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)
owner: public(address)
authorizationState: public(HashMap[address, HashMap[bytes32, bool]])
nonces: public(HashMap[address, uint256])  # EIP-2612


@deploy
def __init__():
    self.owner = msg.sender


@external
@view
def name() -> String[32]:
    return NAME


@external
@view
def symbol() -> String[8]:
    return SYMBOL


@external
@view
def version() -> String[8]:
    return VERSION


@external
@view
def decimals() -> uint8:
    return DECIMALS


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, keccak256(NAME), keccak256(VERSION), chain.id, self)
    )


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert sender != empty(address), "ERC20: transfer from the zero address"
    assert receiver != empty(address), "ERC20: transfer to the zero address"
    assert self.balanceOf[sender] >= amount, "ERC20: transfer amount exceeds balance"
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@internal
def _approve(owner: address, spender: address, amount: uint256):
    assert owner != empty(address), "ERC20: approve from the zero address"
    assert spender != empty(address), "ERC20: approve to the zero address"
    self.allowance[owner][spender] = amount
    log Approval(owner=owner, spender=spender, value=amount)


@external
def approve(spender: address, amount: uint256) -> bool:
    self._approve(msg.sender, spender, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    assert self.allowance[sender][msg.sender] >= amount, "ERC20: transfer amount exceeds allowance"
    self.allowance[sender][msg.sender] -= amount
    self._transfer(sender, receiver, amount)
    return True


@external
def mint(receiver: address, amount: uint256) -> bool:
    assert msg.sender == self.owner, "FiatToken: caller is not a minter"
    assert receiver != empty(address), "FiatToken: mint to the zero address"
    self.totalSupply += amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=empty(address), receiver=receiver, value=amount)
    return True


@internal
@view
def _recover(digest: bytes32, v: uint8, r: bytes32, s: bytes32) -> address:
    assert convert(s, uint256) <= HALF_ORDER, "ECRecover: invalid signature 's' value"
    assert v == 27 or v == 28, "ECRecover: invalid signature 'v' value"
    signer: address = ecrecover(digest, convert(v, uint256), r, s)
    assert signer != empty(address), "ECRecover: invalid signature"
    return signer


@internal
@view
def _check_signature(signer: address, struct_hash: bytes32, v: uint8, r: bytes32, s: bytes32):
    digest: bytes32 = keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))
    assert self._recover(digest, v, r, s) == signer, "FiatTokenV2: invalid signature"


@external
def permit(owner: address, spender: address, amount: uint256, deadline: uint256, v: uint8, r: bytes32, s: bytes32):
    # As FiatTokenV2: a deadline of max uint256 never expires; each signature spends the owner's next nonce.
    assert deadline == max_value(uint256) or deadline >= block.timestamp, "FiatTokenV2: permit is expired"
    nonce: uint256 = self.nonces[owner]
    self.nonces[owner] = nonce + 1
    struct_hash: bytes32 = keccak256(abi_encode(PERMIT_TYPEHASH, owner, spender, amount, nonce, deadline))
    digest: bytes32 = keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))
    assert self._recover(digest, v, r, s) == owner, "EIP2612: invalid signature"
    self._approve(owner, spender, amount)


@internal
def _use_authorization(
    typehash: bytes32,
    sender: address,
    receiver: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    assert block.timestamp > valid_after, "FiatTokenV2: authorization is not yet valid"
    assert block.timestamp < valid_before, "FiatTokenV2: authorization is expired"
    assert not self.authorizationState[sender][nonce], "FiatTokenV2: authorization is used or canceled"
    struct_hash: bytes32 = keccak256(
        abi_encode(typehash, sender, receiver, amount, valid_after, valid_before, nonce)
    )
    self._check_signature(sender, struct_hash, v, r, s)
    self.authorizationState[sender][nonce] = True
    log AuthorizationUsed(authorizer=sender, nonce=nonce)
    self._transfer(sender, receiver, amount)


@external
def transferWithAuthorization(
    sender: address,
    receiver: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    self._use_authorization(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH, sender, receiver, amount, valid_after, valid_before, nonce, v, r, s
    )


@external
def receiveWithAuthorization(
    sender: address,
    receiver: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    assert receiver == msg.sender, "FiatTokenV2: caller must be the payee"
    self._use_authorization(
        RECEIVE_WITH_AUTHORIZATION_TYPEHASH, sender, receiver, amount, valid_after, valid_before, nonce, v, r, s
    )


@external
def cancelAuthorization(authorizer: address, nonce: bytes32, v: uint8, r: bytes32, s: bytes32):
    assert not self.authorizationState[authorizer][nonce], "FiatTokenV2: authorization is used or canceled"
    self._check_signature(authorizer, keccak256(abi_encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)), v, r, s)
    self.authorizationState[authorizer][nonce] = True
    log AuthorizationCanceled(authorizer=authorizer, nonce=nonce)


@external
def __default__():
    # Vyper has no overloading: the `bytes signature` form of transferWithAuthorization (used by x402
    # facilitators for non-65-byte signatures) is decoded here. Only 65-byte ECDSA signatures are valid.
    assert len(msg.data) >= 4, "FiatTokenV2: unknown function"
    assert convert(slice(msg.data, 0, 4), bytes4) == BYTES_OVERLOAD, "FiatTokenV2: unknown function"
    # Calldata of exactly one 65-byte signature: 4 + 7 * 32 (head) + 32 (length) + 96 (padded bytes).
    assert len(msg.data) == 356, "ECRecover: invalid signature length"
    sender: address = empty(address)
    receiver: address = empty(address)
    amount: uint256 = 0
    valid_after: uint256 = 0
    valid_before: uint256 = 0
    nonce: bytes32 = empty(bytes32)
    signature: Bytes[65] = b""
    sender, receiver, amount, valid_after, valid_before, nonce, signature = abi_decode(
        slice(msg.data, 4, 352), (address, address, uint256, uint256, uint256, bytes32, Bytes[65])
    )
    assert len(signature) == 65, "ECRecover: invalid signature length"
    self._use_authorization(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
        sender,
        receiver,
        amount,
        valid_after,
        valid_before,
        nonce,
        convert(slice(signature, 64, 1), uint8),
        convert(slice(signature, 0, 32), bytes32),
        convert(slice(signature, 32, 32), bytes32),
    )
